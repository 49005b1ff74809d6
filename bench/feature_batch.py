"""Benchmark (not a test): feature-extraction throughput by batch size, on this machine's CPU.

    .venv/bin/python bench/feature_batch.py                 # resnet20 (depth 20), 2,100 images
    .venv/bin/python bench/feature_batch.py --depth 56 --images 4200 --repeats 7

`extract_features` (mudjack/features.py) runs every verification, probe and evaluation pass;
its default batch size is what this measures. The encoder is a randomly initialised
resnet_cifar (speed does not depend on the weights) on random 32x32 uint8 images, the same
2,100 images a backdoor verification stamps (100 inputs x (1 trigger + 20 controls)).
The batch sizes alternate within each repeat, so load drifts on a shared host hit all of
them (the default is always among them); the medians and their ratios to the default's are
written to bench/results/feature_batch.json (`--out`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.encoders import get_adapter  # noqa: E402
from mudjack.features import extract_features  # noqa: E402
from mudjack.io import write_json  # noqa: E402

DEFAULT = inspect.signature(extract_features).parameters["batch_size"].default  # the one to beat


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--images", type=int, default=2100)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, DEFAULT, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feature_batch.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = get_adapter("resnet_cifar", {"depth": args.depth})
    encoder = adapter.build().eval()
    raw = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    extract_features(encoder, adapter, raw[:64])  # warm-up
    times: dict[int, list[float]] = {size: [] for size in sorted({*args.batches, DEFAULT})}
    for _ in range(args.repeats):
        for size in times:
            times[size].append(seconds(lambda s=size: extract_features(encoder, adapter, raw, batch_size=s)))
    medians = {size: statistics.median(values) for size, values in times.items()}
    rows = [{"batch_size": size, "median_s": round(median, 3), "images_per_s": round(args.images / median, 1),
             "ratio_to_default": round(median / medians[DEFAULT], 3)} for size, median in medians.items()]
    result = {"command": " ".join(["bench/feature_batch.py", *sys.argv[1:]]), "depth": args.depth,
              "images": args.images, "threads": args.threads, "repeats": args.repeats, "rows": rows}
    write_json(args.out, result)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
