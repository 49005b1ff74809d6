"""Fine-tuning defences (Sha et al., "Fine-Tuning Is All You Need to Mitigate Backdoor Attacks").

FT: fine-tune ALL encoder layers plus a classification head on clean labelled
downstream data with cross-entropy. SFT (super-fine-tuning): the same, with a
two-phase cyclic learning rate: within each phase the rate moves linearly up and
down between `base_lr` and the phase's maximum in cycles of `cycle_steps`; phase 1
(the first `phase1_epochs`) uses a high maximum, phase 2 a low one. The exact
values are unconfirmed in the paper; every one is a parameter.

Budget (`tasks`): `reporting` fine-tunes on one task's labelled data (`task`, by default the
bugs' task: what a provider holding one customer's data could do); `all` on the labelled data
of every task at once, through one head over the union of their classes (task i's labels
shifted past those of tasks before it). `clean_samples` caps each task's share.
"""

from __future__ import annotations

import copy
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mudjack.config import (
    BatchSize,
    Count,
    Device,
    Dropout,
    Epochs,
    LearningRate,
    Momentum,
    Params,
    WeightDecay,
    Width,
)
from mudjack.data import LabelledSet
from mudjack.device import autocast, select_device, to_device
from mudjack.heads import Classifier, Head
from mudjack.patching.base import PatchInputs, PatchResult
from mudjack.training import sgd_or_adam


class FinetuneParams(Params):
    device: Device = "auto"
    task: str = ""                 # which labelled task to fine-tune on ("": the bugs' task)
    tasks: Literal["reporting", "all"] = "reporting"  # that task's labels only, or every task's
    clean_samples: Count = 0       # labelled clean samples used per task (0: all of its train set)
    epochs: Epochs = 10
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: LearningRate = 1e-2
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    batch_size: BatchSize = 64
    hidden: list[Width] = Field([512, 256], max_length=16)
    dropout: Dropout = 0.5


class SuperFinetuneParams(FinetuneParams):
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Momentum = 0.0       # the public re-implementation uses plain SGD
    base_lr: LearningRate = 0.03
    max_lr_phase1: LearningRate = 2.5
    max_lr_phase2: LearningRate = 0.05
    phase1_epochs: Count = 4
    cycle_steps: int = Field(20, ge=2)         # 10 steps up, 10 down


def cyclic_lr(step: int, steps_per_epoch: int, params: SuperFinetuneParams) -> float:
    """The SFT rate at a global step: triangular cycles, high peak in phase 1, low in phase 2."""
    peak = params.max_lr_phase1 if step // steps_per_epoch < params.phase1_epochs else params.max_lr_phase2
    half = params.cycle_steps / 2
    position = step % params.cycle_steps
    rising = position / half if position < half else (params.cycle_steps - position) / half
    return params.base_lr + (peak - params.base_lr) * rising


def _sample(data: LabelledSet, count: int, seed: int) -> LabelledSet:
    """`count` samples drawn at random (all when 0 or more than there are)."""
    if not count or count >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:count]))


def _labelled_data(inputs: PatchInputs, params: FinetuneParams, seed: int) -> tuple[list[str], LabelledSet]:
    """The tasks fine-tuned on and their labelled data (see the module docstring, Budget)."""
    task = params.task or (inputs.bugs[0].task if inputs.bugs else next(iter(inputs.labelled)))
    if task not in inputs.labelled:
        raise KeyError(f"no labelled data for task {task!r}; have {sorted(inputs.labelled)}")
    if params.tasks == "reporting":
        return [task], _sample(inputs.labelled[task], params.clean_samples, seed)
    names, xs, ys, offset = sorted(inputs.labelled), [], [], 0
    for name in names:
        data = _sample(inputs.labelled[name], params.clean_samples, seed)
        xs.append(data.x)
        ys.append(data.y + offset)
        offset += int(inputs.labelled[name].y.max()) + 1
    if len({x.shape[1:] for x in xs}) > 1:
        raise ValueError(f"finetune.tasks: all needs inputs of one shape; got {[x.shape[1:] for x in xs]}")
    return names, LabelledSet(np.concatenate(xs), np.concatenate(ys))


def _optimiser(model: torch.nn.Module, params: FinetuneParams, lr: float) -> torch.optim.Optimizer:
    return sgd_or_adam(model.parameters(), params.optimizer, lr=lr, momentum=params.momentum,
                       weight_decay=params.weight_decay)


def finetune(inputs: PatchInputs, params: FinetuneParams, *, seed: int = 0) -> PatchResult:
    """FT, or SFT when `params` is a SuperFinetuneParams: returns the fine-tuned encoder."""
    torch.manual_seed(seed)
    device = select_device(params.device)
    tasks, data = _labelled_data(inputs, params, seed)
    classes = int(data.y.max()) + 1
    head = Head(inputs.adapter.feature_dim, classes, hidden=list(params.hidden), dropout=params.dropout)
    model = Classifier(copy.deepcopy(inputs.encoder), head).to(device).train()
    model.requires_grad_(True)  # all layers, BatchNorm included
    schedule = isinstance(params, SuperFinetuneParams)
    optimiser = _optimiser(model, params, params.base_lr if schedule else params.lr)
    labels = torch.as_tensor(data.y, dtype=torch.long)
    steps_per_epoch = -(-len(labels) // params.batch_size)
    log, step, start = [], 0, time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        total, order = 0.0, torch.randperm(len(labels))
        for begin in range(0, len(order), params.batch_size):
            index = order[begin:begin + params.batch_size]
            if schedule:
                for group in optimiser.param_groups:
                    group["lr"] = cyclic_lr(step, steps_per_epoch, params)
            with autocast(device):
                # per batch: text is tokenised to its batch's longest sentence, not the set's
                batch = inputs.adapter.preprocess(data.x[index.numpy()])
                logits = model(to_device(batch, device))
                loss = F.cross_entropy(logits.float(), to_device(labels[index], device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, step = total + float(loss.detach()), step + 1
        log.append({"epoch": epoch, "loss": total / steps_per_epoch,
                    "lr": optimiser.param_groups[0]["lr"]})
    encoder = model.encoder.eval().cpu()
    return PatchResult(encoder, log, time.perf_counter() - start, step,
                       info={"device": str(device), "task": tasks[0] if len(tasks) == 1 else "all",
                             "tasks": tasks, "budget": params.tasks, "clean_samples": len(labels),
                             "labelled": True})


def super_finetune(inputs: PatchInputs, params: SuperFinetuneParams, *, seed: int = 0) -> PatchResult:
    return finetune(inputs, params, seed=seed)
