"""Measurement stage: backdoor sequela of the repair (mudjack/sequela.py), into reports/sequela.json.

Membership inference on every task's classifier, before (backdoored encoder and its retrained
head) and after (patched encoder and its head); re-injection of the backdoor into the patched
encoder and into the clean foundation encoder (`sequela.clean_encoder`), with the attack's
BadEncoder settings (`attack`; defaults without one). The backdoor re-injected is the true one
when known, else the first accepted bug's reversed trigger, aimed at the class that bug's task
was most often misclassified as; which one is recorded. Features are computed, and the
re-injections trained, on `sequela.device` (CUDA when there is one; the heads stay on the CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mudjack.attacks import BadEncoderParams, pick_attack_reference, steps_per_epoch
from mudjack.bugs import Bug, check_bugs, load_bugs
from mudjack.data import Task, load_shadow, load_tasks
from mudjack.device import select_device
from mudjack.encoders import EncoderAdapter, load_encoder, load_patch_of
from mudjack.features import extract_features, on_device
from mudjack.heads import Head, load_head, train_head
from mudjack.io import ready_outputs, write_json
from mudjack.metrics import non_target
from mudjack.sequela import Backdoor, membership_inference, reinjection
from mudjack.triggers import TextTrigger, Trigger
from stages.artifacts import BUGS, HEADS, PATCHED_ENCODER, SEQUELA
from stages.common import load_truth
from stages.config import PipelineParams, setup_stage

VARIANTS = ("backdoored", "patched")


def membership(params: PipelineParams, tasks: dict[str, Task],
               encoders: dict[str, tuple[nn.Module, EncoderAdapter]]) -> dict[str, Any]:
    """Per task and variant: the loss-threshold attack on train members vs test non-members."""
    out: dict[str, Any] = {}
    for name, task in tasks.items():
        out[name] = {}
        for variant in VARIANTS:
            encoder, adapter = encoders[variant]
            head = load_head(HEADS / name / f"{variant}.safetensors")
            members = (extract_features(encoder, adapter, task.train.x), task.train.y)
            nonmembers = (extract_features(encoder, adapter, task.test.x), task.test.y)
            out[name][variant] = membership_inference(head, members, nonmembers,
                                                      samples=params.sequela.mi_samples, seed=params.seed)
    return out


def reinjected(params: PipelineParams, bugs: list[Bug]) -> tuple[str, Trigger | TextTrigger, int, str] | None:
    """(task, trigger, target, source) of the backdoor to re-inject; None when nothing is known."""
    truth, targets = load_truth(params.paths)
    if truth is not None and targets:
        task, target = next(iter(targets.items()))
        return task, truth, target, "truth"
    if not bugs:
        return None
    predicted = np.bincount([b.predicted for b in bugs if b.task == bugs[0].task])
    return bugs[0].task, bugs[0].trigger, int(predicted.argmax()), "reversed"


def attack_params(params: PipelineParams) -> BadEncoderParams:
    if params.attack is None:
        return BadEncoderParams()
    return BadEncoderParams(**params.attack.model_dump(include=set(BadEncoderParams.model_fields)))


def attacker_shadow(params: PipelineParams) -> np.ndarray:
    """The inputs BadEncoder trains on: `sequela.reinject_shadow`, else `attack.samples`, of the
    shadow set drawn with the seed (0: all of it)."""
    shadow = load_shadow(params.paths.shadow)
    count = params.sequela.reinject_shadow or (params.attack.samples if params.attack else 0)
    if not count or count >= len(shadow):
        return shadow
    return shadow[np.sort(np.random.default_rng(params.seed).permutation(len(shadow))[:count])]


def check_inputs(task: Task, target: int, count: int, seed: int) -> np.ndarray:
    """A fixed held-out sample: `count` test inputs of other classes than the target."""
    pool = task.test.x[non_target(task.test.y, target)]
    return pool[np.sort(np.random.default_rng(seed).permutation(len(pool))[:count])]


def clean_head(params: PipelineParams, encoder: nn.Module, adapter: EncoderAdapter, task: Task) -> Head:
    """A head on the clean encoder, trained as the retrain stage trains its heads."""
    features = extract_features(encoder, adapter, task.train.x)
    return train_head(features, task.train.y, len(task.classes), params.retrain, seed=params.seed)


def reinject(params: PipelineParams, tasks: dict[str, Task], patched: tuple[nn.Module, EncoderAdapter],
             bugs: list[Bug], *, device: torch.device) -> dict[str, Any] | None:
    """Steps to re-inject the backdoor into the patched encoder and into the clean one, BadEncoder
    training on `device`."""
    found = reinjected(params, bugs)
    if found is None or found[0] not in tasks:
        return None
    name, trigger, target, source = found
    cfg = params.sequela
    task, attack, shadow = tasks[name], attack_params(params), attacker_shadow(params)
    check = check_inputs(task, target, cfg.reinject_check_samples, params.seed)
    frozen = on_device(patched[0], device)  # each start placed once: for its head and reference
    starts = {"repaired": (*patched, frozen, load_head(HEADS / name / "patched.safetensors"))}
    clean_path = Path(cfg.clean_encoder)
    if clean_path.is_file():
        encoder, adapter = load_encoder(clean_path)
        frozen = on_device(encoder, device)
        starts["clean"] = (encoder, adapter, frozen, clean_head(params, frozen, adapter, task))
    out: dict[str, Any] = {"task": name, "target": target, "trigger": source,
                           "attack": attack.model_dump(), "shadow": len(shadow),
                           "attack_budget_steps": attack.epochs * steps_per_epoch(len(shadow), attack),
                           "device": str(device), "clean": None}
    for start, (encoder, adapter, frozen, head) in starts.items():
        reference = pick_attack_reference(frozen, adapter, task.train.x, task.train.y, target=target)
        out[start] = reinjection(encoder, adapter, head, Backdoor(trigger, reference, target), shadow=shadow,
                                 check=check, attack=attack, goal=cfg.reinject_asr,
                                 max_steps=cfg.reinject_max_steps, check_every=cfg.reinject_check_every,
                                 seed=params.seed, device=device)
        print(f"sequela: re-injection into the {start} encoder: steps {out[start]['steps']} "
              f"(ASR {out[start]['final_asr']:.3f}, cap {cfg.reinject_max_steps}) on {device}")
    return out


def main() -> None:
    params = setup_stage()
    device = select_device(params.sequela.device)  # a device this machine lacks: refused before any work
    ready_outputs(SEQUELA)
    tasks = load_tasks(params.paths.tasks)
    encoders = {"backdoored": load_encoder(params.paths.encoder),
                "patched": load_patch_of(PATCHED_ENCODER, params.paths.encoder)}
    bugs = load_bugs(BUGS)
    check_bugs(bugs, tasks, registry=BUGS, adapter=encoders["backdoored"][1])
    placed = {variant: (on_device(encoder, device), adapter) for variant, (encoder, adapter)
              in encoders.items()}
    result = {"membership": membership(params, tasks, placed),
              "reinjection": reinject(params, tasks, encoders["patched"], bugs, device=device)}
    write_json(SEQUELA, result)
    for name, variants in result["membership"].items():
        print(f"sequela: {name}: MI AUC " + ", ".join(
            f"{v} {m['auc']:.3f} (advantage {m['advantage']:.3f})" for v, m in variants.items()))


if __name__ == "__main__":
    main()
