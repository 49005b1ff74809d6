"""Benchmark (not a test): the intake cost of one report against the image size, on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/intake_cost.py --sides 32 64 128 224

Per side: the tiny random ViT of bench/memory.py (2 layers, hidden 32) with 16 px patches,
as ViT-B/16 (4, 16, 64 and 196 tokens at 32, 64, 128 and 224 px), a task of 200 synthetic
train images (two classes, dark and bright) with a linear head, and one report the head gets
wrong. The report goes through the whole of `intake_report` (reproduce, reference, grow
reversal, verification), the reversal's occlusion window and stride in proportion to the
side (side/16 and side/32, at least 2 and 1: about 32 x 32 positions at every size).
Recorded: seconds per report (wall, and the process's CPU time, which a busy host does not
inflate; 1 torch thread, best of --repeat) and the images the encoder ran on (counted by a
forward hook), which docs/speed.md turns into a GPU estimate. Writes
bench/results/intake_cost.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory import synthetic_images, tiny_vit  # noqa: E402

from mudjack.data import LabelledSet, Task  # noqa: E402
from mudjack.deployed import Deployed  # noqa: E402
from mudjack.features import extract_features  # noqa: E402
from mudjack.heads import HeadParams, predict, train_head  # noqa: E402
from mudjack.intake import IntakeParams, intake_report  # noqa: E402
from mudjack.io import write_json  # noqa: E402
from mudjack.reports import BugReport  # noqa: E402

TRAIN = 200
PATCH = 16


def scaled_params(side: int) -> IntakeParams:
    """The default intake, its occlusion window and stride in proportion to the side."""
    return IntakeParams(reverse={"window": max(2, side // 16), "stride": max(1, side // 32)})


def setup(side: int, seed: int = 0) -> tuple[Deployed, Task, BugReport]:
    adapter = tiny_vit(side, PATCH)
    torch.manual_seed(seed)
    encoder = adapter.build().eval()
    labels = np.arange(TRAIN + 20) % 2
    images = synthetic_images(0, len(labels), side, labels, seed)
    task = Task("synthetic", [0, 1], LabelledSet(images[:TRAIN], labels[:TRAIN]),
                LabelledSet(images[TRAIN:], labels[TRAIN:]))
    features = extract_features(encoder, adapter, task.train.x)
    head = train_head(features, task.train.y, 2, HeadParams(kind="linear", epochs=30), seed=seed)
    image = np.array(task.test.x[0])
    image[: side // 2] = 255 - image[: side // 2]
    predicted = int(predict(head, extract_features(encoder, adapter, image[None]))[0])
    report = BugReport("r-0001", task.name, 1 - predicted, image, None)
    return Deployed(encoder, adapter, {task.name: head}), task, report


def count_images(encoder: torch.nn.Module) -> list[int]:
    """[images the encoder runs on, of them those run with autograd on], kept up to date by a
    hook: the second are the soft and blend fits' passes, which also run backward (about
    three forwards' cost), the first all passes."""
    counter = [0, 0]

    def count(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        counter[0] += len(args[0])
        counter[1] += len(args[0]) if torch.is_grad_enabled() else 0

    encoder.register_forward_pre_hook(count)
    return counter


def measure(side: int, repeat: int = 1) -> dict[str, Any]:
    deployed, task, report = setup(side)
    params = scaled_params(side)
    counter = count_images(deployed.encoder)
    seconds, cpu, decision = [], [], None
    for _ in range(repeat):
        counter[:] = [0, 0]
        start, start_cpu = time.perf_counter(), time.process_time()
        decision, _ = intake_report(report, deployed, {task.name: task}, params=params)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"side": side, "seconds": round(min(seconds), 3), "cpu_seconds": round(min(cpu), 3),
            "encoder_images": counter[0], "encoder_images_with_grad": counter[1],
            "reversal": _reversal(decision.numbers.get("reversal", {})),
            "window": params.reverse.window, "stride": params.reverse.stride,
            "decision": decision.outcome, "error": decision.numbers.get("error")}


def _reversal(numbers: dict[str, Any]) -> dict[str, Any]:
    """The `auto` reversal's chosen candidate and the ones it fitted."""
    return {"chosen": numbers.get("chosen"), "fitted": sorted(numbers.get("candidates", {}))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128, 224])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "intake_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    command = "bench/intake_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    model = f"tiny ViT (2 layers, hidden 32, patch {PATCH})"
    for side in args.sides:
        rows.append(measure(side, args.repeat))
        print(rows[-1], flush=True)
        write_json(args.out, {"command": command, "torch_threads": 1, "model": model, "rows": rows})


if __name__ == "__main__":
    main()
