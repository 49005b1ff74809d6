"""Benchmark (not a test): what folding BatchNorms into convolutions buys intake, on this CPU.

    .venv/bin/python bench/fold_speed.py                     # resnet20, 2 threads
    .venv/bin/python bench/fold_speed.py --threads 1 --out bench/results/fold_speed_t1.json

Intake runs the deployed encoder through `Deployed.for_inference` (mudjack/encoders/folding.py).
Two workloads, each on the encoder as deployed and on its folded copy, alternating within
every repeat so that load drifts on a shared host hit both:
- `soft_fit`: the soft trigger fit (mudjack/intake/soft.py) for `--steps` steps on 64 clean
  inputs, forward and backward (the bulk of a 32x32 report's intake: 200 steps per fit);
- `features`: `extract_features` on the 2,100 inputs one verification stamps.
The encoder is a randomly initialised resnet_cifar whose BatchNorm statistics are drawn away
from their defaults (speed does not depend on the weights); the medians, their ratio
(folded / deployed) and the largest feature difference go to bench/results/fold_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from feature_batch import seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.encoders import get_adapter  # noqa: E402
from mudjack.encoders.folding import folded  # noqa: E402
from mudjack.features import extract_features  # noqa: E402
from mudjack.intake.soft import SoftParams, soft_trigger  # noqa: E402
from mudjack.io import write_json  # noqa: E402


def deployed_encoder(depth: int) -> tuple[torch.nn.Module, object]:
    """A resnet_cifar encoder in eval mode with BatchNorm statistics away from 0 / 1."""
    torch.manual_seed(0)
    adapter = get_adapter("resnet_cifar", {"depth": depth})
    encoder = adapter.build().eval()
    for layer in encoder.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.normal_(0, 0.3)
            layer.running_var.uniform_(0.3, 2.0)
    return encoder, adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=2100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fold_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder, adapter = deployed_encoder(args.depth)
    models = {"deployed": encoder, "folded": folded(encoder)}
    raw = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    fit = SoftParams(steps=args.steps)
    workloads = {
        "soft_fit": lambda model: soft_trigger(model, adapter, raw[0], raw[1:65], params=fit),
        "features": lambda model: extract_features(model, adapter, raw),
    }
    times = {(work, name): [] for work in workloads for name in models}
    for work, name in times:  # warm-up
        workloads[work](models[name])
    for _ in range(args.repeats):
        for work, name in times:
            times[work, name].append(seconds(lambda w=work, n=name: workloads[w](models[n])))
    medians = {key: statistics.median(values) for key, values in times.items()}
    rows = [{"workload": work, "deployed_s": round(medians[work, "deployed"], 3),
             "folded_s": round(medians[work, "folded"], 3),
             "ratio": round(medians[work, "folded"] / medians[work, "deployed"], 3)} for work in workloads]
    with torch.no_grad():
        pixels = adapter.preprocess(raw[:256])
        difference = float((models["folded"](pixels) - encoder(pixels)).abs().max())
    result = {"command": " ".join(["bench/fold_speed.py", *sys.argv[1:]]), "depth": args.depth,
              "steps": args.steps, "images": args.images, "threads": args.threads,
              "repeats": args.repeats, "max_feature_difference": difference, "rows": rows}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
