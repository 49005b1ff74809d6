"""Benchmark (not a test): the ASR a never-attacked encoder gets, next to the backdoored and
patched ones, in a scenario workspace that has been reproduced.

    .venv/bin/python bench/asr_floor.py runs/minilm-sst2

ASR counts every non-target input predicted as the target once the trigger is stamped, so
on a binary task (SST-2) the clean encoder's own errors on the other class are a floor no
repair can go below. The clean encoder is the workspace's models/foundation; all three get
`retrain.heads` fresh heads with the workspace's `retrain` parameters (each metric their mean,
with `per_head` when there are several) and the scenario's true trigger, as the retrain stage
does. Besides clean_acc, asr and tba it reports `flip_asr`: the same ASR over
only the non-target inputs the model classifies correctly without the trigger, which leaves
the natural errors out and isolates what the trigger does. A task the attack did not aim at
takes the target the retrain stage inferred (reports/metrics.json). `--models` picks among
clean, backdoored and patched. `--shift ROWS COLS` moves the true trigger (rolled, wrapping at
the edges) as a control: a backdoor keyed to a place fires less elsewhere, while a pattern
the task reads as the target's content fires wherever it is. Writes
bench/results/asr_floor_<workspace>.json (`--out` names it otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.data import Task, load_tasks  # noqa: E402
from mudjack.encoders import load_encoder  # noqa: E402
from mudjack.evaluation import AttackSpec, retrain_and_evaluate  # noqa: E402
from mudjack.io import read_json, write_json  # noqa: E402
from mudjack.triggers import Trigger  # noqa: E402
from stages.artifacts import BACKDOORED_ENCODER, FOUNDATION, METRICS, PATCHED_ENCODER  # noqa: E402
from stages.common import load_truth  # noqa: E402
from stages.config import RetrainParams, load_params  # noqa: E402

MODELS = {"clean": FOUNDATION, "backdoored": BACKDOORED_ENCODER, "patched": PATCHED_ENCODER}


def evaluate_encoder(path: Path, task: Task, attack: AttackSpec, params: RetrainParams, seed: int) -> dict:
    """The retrain stage's protocol: `retrain.heads` fresh heads on frozen features, their mean."""
    encoder, adapter = load_encoder(path)
    return retrain_and_evaluate(encoder, adapter, task, attack, params, seed=seed, heads=params.heads)[1]


def task_target(name: str, targets: dict[str, int]) -> int | None:
    """The planted target on `name`, else the one the retrain stage inferred (metrics.json)."""
    if name in targets:
        return targets[name]
    if not METRICS.is_file():
        return None
    exposure = read_json(METRICS).get("tasks", {}).get(name, {}).get("exposure", {})
    return exposure.get("target")


def shifted(trigger: Trigger, rows: int, cols: int) -> Trigger:
    """The trigger moved by (rows, cols), its mask and pattern rolled together."""
    return Trigger(np.roll(trigger.mask, (rows, cols), axis=(0, 1)),
                   np.roll(trigger.pattern, (rows, cols), axis=(0, 1)))


def measure(workspace: Path, models: list[str], *, shift: tuple[int, int] = (0, 0)) -> dict:
    os.chdir(workspace)  # the workspace's paths are relative to it
    params = load_params("params.yaml")
    torch.set_num_threads(max(params.threads, 1))
    truth, targets = load_truth(params.paths)
    if truth is None:
        raise SystemExit(f"{workspace}: no true trigger ({params.paths.truth}); run the scenario first")
    if any(shift):
        if not isinstance(truth, Trigger):
            raise SystemExit("--shift moves an image trigger; this workspace's is text")
        truth = shifted(truth, *shift)
    results: dict = {}
    for name, task in load_tasks(params.paths.tasks).items():
        target = task_target(name, targets)
        if target is None:
            print(f"{name}: no planted or inferred target; skipped", flush=True)
            continue
        attack = AttackSpec(truth, target, "truth")
        for model, path in ((m, MODELS[m]) for m in models):
            start = time.perf_counter()
            metrics = evaluate_encoder(path, task, attack, params.retrain, params.seed)
            seconds = round(time.perf_counter() - start, 1)
            results.setdefault(name, {})[model] = {**metrics, "seconds": seconds}
            print(f"{name} {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                  if isinstance(v, float)), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--shift", nargs=2, type=int, default=[0, 0], metavar=("ROWS", "COLS"),
                        help="move the true trigger by this many rows and columns (a control)")
    parser.add_argument("--out", default="", help="result file name in bench/results/")
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    results = measure(workspace, args.models, shift=tuple(args.shift))
    if any(args.shift):
        results["shift"] = args.shift
    write_json(ROOT / "bench" / "results" / (args.out or f"asr_floor_{workspace.name}.json"), results)


if __name__ == "__main__":
    main()
