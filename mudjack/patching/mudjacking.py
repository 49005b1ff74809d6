"""Mudjacking (Liu, Reiter, Gong, USENIX Security 2024): patch an encoder from bug reports.

h' starts as a copy of the backdoored encoder h (frozen). With L2-normalised
features and cos(a, b) their dot product, for a batch of shadow images x:

    L_loc = −mean cos(h'(x), h(x)) − mean cos(h'(x_r), h(x_r))
    L_gen = −mean cos(h'(x⊕t), h'(x)) − mean cos(h'(x_r⊕t), h'(x_r))
    L_eff = −mean cos(h'(x_b), h'(x_r))
    L     = L_loc + λ2·L_gen + λ3·L_eff

With `generality: frozen`, L_gen pulls x⊕t to h(x) and x_r⊕t to h(x_r) instead: the stamped
views move to the clean features locality already holds, and the clean views are not pulled
towards the stamped ones (which is where the paper's form loses clean accuracy). With
`generality_distance: chord`, L_gen's pairs are scored by the distance of the normalised
features, sqrt(2 − 2 cos), in place of −cos: −cos is half the squared distance, so its pull
fades as a stamped view nears its anchor and a trace of the trigger's effect stays. L_loc and
L_eff keep −cos (chord there cost vit-cifar clean accuracy: docs/results.md).

Nothing of h' is detached; only h runs without gradients. Every view gets its own
random augmentation. With several bugs, shadow image j is stamped with the
trigger of bug j mod n, and each bug contributes K views of x_b, x_r and x_r⊕t. A bug with
alternate triggers (intake kept other candidates that reproduce it) counts once per trigger,
and a whole-image soft trigger once more per `blend_scales` entry, its alpha scaled up: the
reversal fits the least alpha that reproduces the bug (its sparsity penalty), while the
backdoor fires at the attacker's alpha and above.
One forward of h' runs over all views concatenated; h runs once on the views it needs.
BatchNorm stays in eval mode with frozen affine parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from mudjack.augment import mudjacking_augmentation
from mudjack.bugs import Bug
from mudjack.config import (
    BatchSize,
    Count,
    Device,
    Epochs,
    LearningRate,
    Momentum,
    NonNegative,
    Params,
    WeightDecay,
)
from mudjack.data import batch_rows
from mudjack.device import autocast, select_device, to_device
from mudjack.encoders import (
    EncoderAdapter,
    ImageEncoder,
    freeze_batchnorm,
    has_batchnorm,
    trainable_parameters,
)
from mudjack.features import chord, cosine
from mudjack.patching.base import PatchResult
from mudjack.patching.checkpoint import Checkpointer, Progress, deterministic
from mudjack.patching.distributed import Distributed, average_terms, epoch_order, local_batches, seed_step
from mudjack.patching.speed import contiguous, prepare_models
from mudjack.training import sgd_or_adam
from mudjack.triggers import Trigger, blend, warp

# What L_gen pulls a stamped view to: h(x), the backdoored encoder's clean features (frozen), or
# h'(x), the patched encoder's (patched: the paper's form)
Generality = Literal["frozen", "patched"]
# How L_gen scores a stamped view against its anchor: -cos (the paper's) or the chord distance
GeneralityDistance = Literal["cosine", "chord"]


class MudjackingParams(Params):
    device: Device = "auto"
    epochs: Epochs = 10
    # sgd (at `lr`) | adam (at `adam_lr`) | auto: SGD for encoders with BatchNorm (CNNs), Adam
    # for the others (LayerNorm transformers, as the authors patched CLIP); the patch log says which
    optimizer: Literal["auto", "sgd", "adam"] = "sgd"
    lr: LearningRate = 1e-2
    adam_lr: LearningRate = 1e-3
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    batch_size: BatchSize = 64
    views: int = Field(8, ge=1, le=1024)
    # The authors used augmented views with lambda 1; unaugmented views repaired more of the
    # attack zoo, and with the frozen anchor lambda_gen 1 costs no clean accuracy (params.yaml)
    lambda_gen: NonNegative = 1.0
    lambda_eff: NonNegative = 0.5
    generality: Generality = "frozen"  # frozen: the clean features are not pulled to the trigger
    generality_distance: GeneralityDistance = "chord"  # cosine: the paper's (params.yaml says why)
    shadow_fraction: float = Field(1.0, gt=0, le=1)
    clean_samples: Count = 0         # shadow images used, overriding shadow_fraction when > 0
    # unlabelled train images of the downstream tasks added to the shadow set before the two
    # settings above sample it (mudjack/patching/pool.py)
    task_images: Count = 0
    augment: bool = False
    alternates: bool = True        # also train against each bug's alternate triggers (intake `auto`)
    # a trigger with alpha > 0 on more than half of the image (a fitted blend) is also stamped at
    # its alpha times each of these, clipped to 1 (empty: off)
    blend_scales: list[Annotated[float, Field(gt=1, le=100)]] = [2.0]
    compile: bool = False          # torch.compile the encoders (mudjack/patching/speed.py)
    cpu_bf16: bool = False         # bf16 autocast on a CPU with native bf16 (mudjack/device.py)


class BugViews:
    """The bugs' inputs, references and reversed triggers as [0, 1] tensors on the device: one
    entry per (bug, trigger), a bug's alternate triggers (intake's other candidates that
    reproduce it) after its chosen one when `alternates` is on."""

    def __init__(self, bugs: list[Bug], adapter: EncoderAdapter, device: torch.device, *,
                 alternates: bool = True, blend_scales: Sequence[float] = ()) -> None:
        entries = [(b, t) for b in bugs
                   for t in strengthened(b.triggers if alternates else [b.trigger], blend_scales)]
        self.count = len(entries)
        self.bug = to_device(adapter.preprocess(np.stack([b.bug for b, _ in entries])), device)
        self.reference = to_device(adapter.preprocess(np.stack([b.reference for b, _ in entries])), device)
        masks = np.stack([t.mask for _, t in entries]).astype(np.float32)[:, None]
        self.masks = torch.from_numpy(masks).to(device)
        self.patterns = to_device(adapter.preprocess(np.stack([t.pattern for _, t in entries])), device)
        # offsets in pixels per entry (zero for a trigger that does not warp); None: none warps
        warping = any(t.warps for _, t in entries)
        self.flows = torch.from_numpy(np.stack([
            t.flow if t.flow is not None else np.zeros((*t.mask.shape, 2), np.float32)
            for _, t in entries])).to(device) if warping else None

    def stamp(self, images: torch.Tensor, entry: torch.Tensor | slice) -> torch.Tensor:
        """`images` stamped with the triggers of `entry` (one per image): warped, then blended."""
        if self.flows is not None:
            images = warp(images, self.flows[entry])
        return blend(images, self.patterns[entry], self.masks[entry])

    def repeat(self, tensor: torch.Tensor, views: int) -> torch.Tensor:
        return tensor.repeat_interleave(views, dim=0)


def strengthened(triggers: list[Trigger], scales: Sequence[float]) -> list[Trigger]:
    """`triggers`, then each one with alpha > 0 on more than half of the image again at alpha x
    each scale (clipped to 1). Such a fitted blend's pattern is the trigger's trace mixed with
    what flips the classifier, at the least alpha that reproduces the bug; patched against it
    alone, resnet20 -> GTSRB's SIG-stripes backdoor kept ASR 0.278, with it also at twice the
    alpha 0.112 (the true trigger: 0.019)."""
    spread = [t for t in triggers if t.soft and t.spread]
    return [*triggers, *(Trigger(mask=np.minimum(t.alpha * scale, 1), pattern=t.pattern, flow=t.flow)
                         for scale in scales for t in spread)]


def mudjacking_loss(patched: nn.Module, frozen: nn.Module, views: torch.Tensor, *, batch: int,
                    per_bug: int, params: MudjackingParams) -> dict[str, torch.Tensor]:
    """Loss terms for views = [x (B), x⊕t (B), x_b (V), x_r (V), x_r⊕t (V)], already augmented."""
    out = patched(views)
    with torch.no_grad():
        frozen_out = frozen(torch.cat([views[:batch], views[2 * batch + per_bug:2 * batch + 2 * per_bug]]))
    return loss_terms(out, frozen_out, batch=batch, per_bug=per_bug, params=params)


def loss_terms(out: torch.Tensor, frozen_out: torch.Tensor, *, batch: int, per_bug: int,
               params: MudjackingParams) -> dict[str, torch.Tensor]:
    """The three terms from h' on every view and h on [x, x_r]; shared by image and text."""
    x, x_t = out[:batch], out[batch:2 * batch]
    x_b, x_r, x_r_t = out[2 * batch:].split(per_bug)
    h_x, h_r = frozen_out[:batch], frozen_out[batch:]
    locality = -cosine(x, h_x).mean() - cosine(x_r, h_r).mean()
    anchor, anchor_r = (h_x, h_r) if params.generality == "frozen" else (x, x_r)
    apart = chord if params.generality_distance == "chord" else _negative_cosine
    generalisability = apart(x_t, anchor).mean() + apart(x_r_t, anchor_r).mean()
    effectiveness = -cosine(x_b, x_r).mean()
    loss = locality + params.lambda_gen * generalisability + params.lambda_eff * effectiveness
    return {"loss": loss, "locality": locality, "generalisability": generalisability,
            "effectiveness": effectiveness}


def _negative_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -cosine(a, b)


def build_views(shadow_batch: torch.Tensor, bugs: BugViews, *, views: int,
                augment: nn.Module | None) -> torch.Tensor:
    """Concatenate every view of one step and augment each sample independently."""
    assign = torch.arange(len(shadow_batch), device=shadow_batch.device) % bugs.count
    triggered = bugs.stamp(shadow_batch, assign)
    ref_triggered = bugs.stamp(bugs.reference, slice(None))
    parts = [shadow_batch, triggered, bugs.repeat(bugs.bug, views),
             bugs.repeat(bugs.reference, views), bugs.repeat(ref_triggered, views)]
    stacked = torch.cat(parts)
    return augment(stacked) if augment is not None else stacked


def _prepare(encoder: ImageEncoder, device: torch.device) -> tuple[ImageEncoder, ImageEncoder]:
    frozen = copy.deepcopy(encoder).to(device).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    patched = copy.deepcopy(encoder).to(device).train()
    freeze_batchnorm(patched)
    return patched, frozen


@dataclass
class PatchRun:
    """One patching run: the models, optimiser, data and the step's fixed settings."""

    patched: ImageEncoder
    frozen: ImageEncoder
    optimiser: torch.optim.Optimizer
    shadow: np.ndarray                      # the shadow set, in memory or memory-mapped
    used: np.ndarray                        # the sampled rows of it the run trains on (sorted)
    adapter: EncoderAdapter
    bug_views: BugViews
    augment: nn.Module | None
    device: torch.device
    params: MudjackingParams
    forward: nn.Module | None = None        # what runs h': patched, DDP-wrapped and/or compiled
    context: Distributed | None = None      # set under torchrun (mudjack/patching/distributed.py)
    seed: int = 0

    @property
    def pixels(self) -> torch.Tensor:
        """Every sampled shadow image, preprocessed: for comparisons with a reference loop only
        (the run itself preprocesses one batch at a time)."""
        return self.batch(torch.arange(len(self.used)))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The preprocessed sampled shadow images at `index` (read from disk if mapped)."""
        rows = self.used[index.cpu().numpy()]
        order = np.argsort(rows, kind="stable")  # read a mapped set in file order
        pixels = self.adapter.preprocess(batch_rows(self.shadow, rows[order]))
        return pixels[torch.from_numpy(np.argsort(order, kind="stable"))]

    def step(self, index: torch.Tensor) -> dict[str, float]:
        """One optimiser step on the shadow images at `index`; returns the loss terms."""
        batch = to_device(self.batch(index), self.device)
        with autocast(self.device, self.params.cpu_bf16):
            views = build_views(batch, self.bug_views, views=self.params.views, augment=self.augment)
            forward = self.patched if self.forward is None else self.forward
            terms = mudjacking_loss(forward, self.frozen, views, batch=len(index),
                                    per_bug=self.params.views * self.bug_views.count, params=self.params)
        self.optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimiser.step()
        terms = average_terms(terms, self.context)
        return {name: float(value.detach()) for name, value in terms.items()}


def optimizer_name(encoder: nn.Module, params: MudjackingParams) -> str:
    """The optimiser `auto` resolves to for this encoder."""
    if params.optimizer != "auto":
        return params.optimizer
    return "sgd" if has_batchnorm(encoder) else "adam"


def image_optimiser(patched: nn.Module, params: MudjackingParams) -> torch.optim.Optimizer:
    name = optimizer_name(patched, params)
    adam = name == "adam"  # at its own rate, without weight decay: it would pull every weight
    return sgd_or_adam(list(trainable_parameters(patched)), name, lr=params.adam_lr if adam else params.lr,
                       momentum=params.momentum, weight_decay=0.0 if adam else params.weight_decay)


def start_run(encoder: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, bugs: list[Bug],
              params: MudjackingParams, *, seed: int, context: Distributed | None = None) -> PatchRun:
    """Set up a run: the patched and frozen copies, the optimiser, the sampled shadow pixels
    and the bugs' views; `PatchRun.step` then takes one optimiser step (as `mudjacking` loops)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = context.device if context is not None else select_device(params.device)
    patched, frozen = _prepare(encoder, device)
    forward, frozen = prepare_models(patched, frozen, compile_models=params.compile, context=context,
                                     nhwc=adapter.channels_last)
    optimiser = image_optimiser(patched, params)
    count = params.clean_samples or max(1, int(round(params.shadow_fraction * len(shadow))))
    used = np.sort(rng.permutation(len(shadow))[:count])
    augment = mudjacking_augmentation().to(device) if params.augment else None
    views = BugViews(bugs, adapter, device, alternates=params.alternates, blend_scales=params.blend_scales)
    return PatchRun(patched, frozen, optimiser, shadow, used, adapter, views, augment, device, params,
                    forward, context, seed)


def _train(run: PatchRun, progress: Progress, checkpoint: Checkpointer | None) -> None:
    """Run the remaining epochs from `progress`, checkpointing when due."""
    size = run.params.batch_size
    while progress.epoch <= run.params.epochs:
        if progress.order is None:
            progress.order = epoch_order(len(run.used), progress.epoch, seed=run.seed, context=run.context)
        batches = local_batches(progress.order, size, run.context)
        while progress.position < len(batches):
            seed_step(run.seed, progress.step, run.context)
            progress.add(run.step(batches[progress.position]))
            if checkpoint is not None and checkpoint.due(progress.step):
                checkpoint.save(run.patched, run.optimiser, progress)
        progress.end_epoch(len(batches))


def mudjacking(encoder: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, bugs: list[Bug],
               params: MudjackingParams, *, seed: int = 0,
               checkpoint: Checkpointer | None = None,
               distributed: Distributed | None = None) -> PatchResult:
    """Patch `encoder` from accepted bugs using unlabelled shadow images; returns a new encoder.

    With a `checkpoint`, the whole loop state is saved every `checkpoint.every` steps and a
    valid checkpoint of the same inputs is resumed from; the result is the same either way.
    Under torchrun, pass this rank's `distributed` context (and its `rank_checkpointer`).
    """
    if not bugs:
        raise ValueError("mudjacking needs at least one accepted bug")
    run = start_run(encoder, adapter, shadow, bugs, params, seed=seed, context=distributed)
    progress = (checkpoint.load(run.patched, run.optimiser) if checkpoint else None) or Progress()
    with deterministic(run.device):
        _train(run, progress, checkpoint)
    return PatchResult(contiguous(run.patched.eval().cpu()), progress.log, progress.elapsed(), progress.step,
                       info={"device": str(run.device), "clean_samples": len(run.used),
                             "optimizer": optimizer_name(run.patched, run.params),
                             "bug_ids": [b.id for b in bugs], "triggers": run.bug_views.count,
                             "resumed_from_step": progress.resumed_from,
                             "world_size": distributed.world_size if distributed else 1})
