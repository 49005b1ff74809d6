"""Benchmark (not a test): what the warp fit adds to intake, against the soft fit in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/warp_cost.py --scenario resnet20-gtsrb --family patch --seed 0

On a zoo plant of bench/attack_zoo.py (from its cache: run that first) and one genuine report
(a test input of another class carrying the trigger, that the deployed model sends to the
target), the warp fit (mudjack/intake/warp.py) and the soft fit (mudjack/intake/soft.py, the
baseline: auto's longest candidate) each run `--repeat` times on the same bug and clean inputs
with the default settings; then the whole intake of the report once, whose record gives the
warp fit's own seconds inside it. Recorded: wall and process CPU seconds (median of the
repeats), the ratio warp / soft, and the warp's share of the intake. Writes
bench/results/warp_cost_<scenario>.json.
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

from attack_zoo import load_zoo, planted, with_attack  # noqa: E402

from mudjack.deployed import Deployed  # noqa: E402
from mudjack.intake import intake_report  # noqa: E402
from mudjack.intake.soft import SoftParams, soft_trigger  # noqa: E402
from mudjack.intake.warp import WarpParams, warp_fit  # noqa: E402
from mudjack.io import write_json  # noqa: E402
from mudjack.reports import BugReport  # noqa: E402
from stages.attack import pick_genuine  # noqa: E402


def timed(run: Any, repeat: int) -> dict[str, float]:
    """Median wall and CPU seconds of `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": round(float(np.median(wall)), 3), "cpu": round(float(np.median(cpu)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="resnet20-gtsrb")
    parser.add_argument("--family", default="patch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="the plant's attack epochs (cache key)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    zoo = load_zoo(args.scenario, {})
    result, _ = planted(zoo, with_attack(zoo.params, args.family, args.seed, args.epochs))
    (trigger, target), predicted = result.pairs[0], result.triggered[0]
    task, adapter, encoder = zoo.task, zoo.adapter, result.backdoored.eval()
    index = int(pick_genuine(np.random.default_rng(zoo.params.seed), task.test.y, predicted, target, 1)[0])
    bug = adapter.resize_raw(adapter.stamp(task.test.x[index], trigger))
    clean = adapter.resize_raw(task.train.x[task.train.y != target])
    deployed = Deployed(encoder, adapter, {task.name: result.head})
    score = deployed.log_prob(task.name, target)
    warp = timed(lambda: warp_fit(encoder, adapter, bug, clean, params=WarpParams(), score=score),
                 args.repeat)
    soft = timed(lambda: soft_trigger(encoder, adapter, bug, clean, params=SoftParams(), score=score),
                 args.repeat)
    stamped = adapter.stamp(task.test.x[index], trigger)
    report = BugReport("r", task.name, int(task.test.y[index]), stamped, None)
    start = time.perf_counter()
    decision, _ = intake_report(report, deployed, {task.name: task}, params=zoo.params.intake,
                                truth=trigger, seed=zoo.params.seed)
    intake = time.perf_counter() - start
    fitted = decision.numbers.get("reversal", {}).get("candidates", {}).get("warp", {})
    out = {"scenario": args.scenario, "family": args.family, "seed": args.seed,
           "threads": torch.get_num_threads(), "repeat": args.repeat, "warp_fit": warp, "soft_fit": soft,
           "ratio_warp_to_soft": round(warp["wall"] / soft["wall"], 3),
           "intake_seconds": round(intake, 3), "accepted": decision.accepted,
           "warp_in_intake": fitted.get("seconds"), "warp_effect": fitted.get("effect"),
           "warp_share_of_intake": round(fitted["seconds"] / intake, 3) if fitted else None}
    print(out)
    write_json(ROOT / "bench" / "results" / f"warp_cost_{args.scenario}.json", out)


if __name__ == "__main__":
    main()
