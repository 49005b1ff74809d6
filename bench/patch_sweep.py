"""Patch settings against the truth: Mudjacking from a workspace's accepted bugs, with clean
accuracy and ASR (true trigger) of a fresh head measured every few epochs.

    .venv/bin/python bench/patch_sweep.py --workspace runs/vit-cifar --task gtsrb \
        --set augment=false lambda_gen=0.5 lambda_eff=0.5 --epochs 6 --every 2 \
        --out bench/results/patch_sweep_vit-cifar_noaug.json

Reads the workspace's backdoored encoder, shadow set, task, accepted bugs (bugs/, of any task) and the
planted truth (the scenario knows it); `--true-trigger` patches with the true trigger in place
of the reversed one (what perfect recovery would give), `--pad N` grows each reversed
trigger's region by N pixels filled from the bug input (the authors' t = x_b under m). The
head is retrained as the retrain stage does (`--head-epochs`); the workspace is not changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mudjack.bugs import Bug, load_bugs
from mudjack.data import Task, load_shadow, load_tasks
from mudjack.encoders import EncoderAdapter, ImageEncoder, freeze_batchnorm, load_encoder
from mudjack.evaluation import AttackSpec, retrain_and_evaluate
from mudjack.heads import HeadParams
from mudjack.intake.masks import grown_trigger
from mudjack.io import read_npz, write_json
from mudjack.patching.base import PatchInputs
from mudjack.patching.distributed import epoch_order, local_batches
from mudjack.patching.mudjacking import MudjackingParams, start_run
from mudjack.patching.pool import task_pool
from mudjack.triggers import trigger_coverage
from mudjack.truth import truth_pair


def padded(bug: Bug, pad: int) -> Bug:
    """The bug with its trigger's region grown by `pad` pixels from the bug input."""
    return dataclasses.replace(bug, trigger=grown_trigger(bug.trigger, bug.bug, pad))


def _evaluate(encoder: ImageEncoder, adapter: EncoderAdapter, task: Task, attack: AttackSpec,
              head: HeadParams) -> dict[str, float | None]:
    return retrain_and_evaluate(encoder, adapter, task, attack, head, seed=0)[1]


def sweep(encoder: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, bugs: list[Bug],
          task: Task, attack: AttackSpec, params: MudjackingParams, *, every: int, head: HeadParams,
          seed: int = 0) -> list[dict[str, Any]]:
    """Mudjacking epoch by epoch; a row of clean_acc / asr / tba / flip_asr every `every` epochs
    (epoch 0: the backdoored encoder)."""
    rows = [{"epoch": 0, "steps": 0, "seconds": 0.0, **_evaluate(encoder, adapter, task, attack, head)}]
    run, steps, start = start_run(encoder, adapter, shadow, bugs, params, seed=seed), 0, time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        for batch in local_batches(epoch_order(len(run.used), epoch, seed=seed, context=None),
                                   params.batch_size, None):
            run.step(batch)
            steps += 1
        if epoch % every == 0 or epoch == params.epochs:
            seconds = round(time.perf_counter() - start, 1)
            rows.append({"epoch": epoch, "steps": steps, "seconds": seconds,
                         **_evaluate(run.patched.eval(), adapter, task, attack, head)})
            freeze_batchnorm(run.patched.train())
            print(rows[-1], flush=True)
    return rows


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--set", type=_setting, nargs="*", default=[], help="patch settings KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--true-trigger", action="store_true")
    parser.add_argument("--pad", type=int, default=0)
    parser.add_argument("--target", type=int, default=None,
                        help="the task's target class (default: the planted one; a task the attack did "
                             "not aim at needs it, e.g. the exposure's inferred target in metrics.json)")
    parser.add_argument("--head-epochs", type=int, default=60)
    parser.add_argument("--head-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ws = args.workspace
    if not (ws / "models" / "backdoored" / "truth.npz").is_file() or not (ws / "bugs").is_dir():
        sys.exit(f"{ws}: needs a planted truth (models/backdoored/truth.npz) and accepted bugs (bugs/)")
    truth, targets = truth_pair(read_npz(ws / "models" / "backdoored" / "truth.npz"), "")
    target = args.target if args.target is not None else targets.get(args.task)
    if target is None:
        sys.exit(f"{args.task}: the attack planted no target there; pass --target")
    encoder, adapter = load_encoder(ws / "models" / "backdoored" / "encoder.safetensors")
    bugs = load_bugs(ws / "bugs")  # every accepted bug, as the patch stage takes them
    if args.true_trigger:
        bugs = [dataclasses.replace(b, trigger=truth, alternates=()) for b in bugs]
    elif args.pad:
        bugs = [padded(b, args.pad) for b in bugs]
    params = MudjackingParams(**{"epochs": args.epochs, **dict(args.set)})
    tasks = load_tasks(ws / "data" / "prepared" / "tasks")
    task = tasks[args.task]
    # what the patch stage trains on: the shadow set, with `task_images` of every task's train set
    inputs = PatchInputs(encoder, adapter, load_shadow(ws / "data" / "prepared" / "shadow.npz"), bugs,
                         {name: t.train for name, t in tasks.items()})
    rows = sweep(encoder, adapter, task_pool(inputs, params.task_images), bugs, task,
                 AttackSpec(truth, target, "truth"), params, every=args.every,
                 head=HeadParams(epochs=args.head_epochs, batch_size=args.head_batch))
    result = {"command": " ".join(["bench/patch_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
              "settings": dict(args.set), "true_trigger": args.true_trigger, "pad": args.pad,
              "coverage": [round(trigger_coverage(b.trigger, truth), 3) for b in bugs],
              "pixels": [b.trigger.pixels for b in bugs],
              "alternates_coverage": [[round(trigger_coverage(t, truth), 3) for t in b.alternates]
                                      for b in bugs],
              "cpu_threads": torch.get_num_threads(),
              "rows": rows}
    if args.out is not None:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
