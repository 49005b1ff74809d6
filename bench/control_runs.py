"""Benchmark (not a test): what the screen of long text controls buys verification, on this CPU.

    .venv/bin/python bench/control_runs.py                    # runs/minilm-sst2, 2 threads
    .venv/bin/python bench/control_runs.py --threads 1 --out bench/results/control_runs_t1.json

Verification's text controls are each control sentence's strongest run of the trigger's word
count (`phrase.strongest_runs`): every run of every control is measured on the search's 16
sentences, so the cost grows with the controls' length. Past `intake.reverse.phrase.control_runs`
runs, a first pass on a quarter of the sentences keeps each control's four strongest. Per control
set (`short`: 20 clean sentences of the target class, as verification draws them; `long`: 20
reviews made by joining such sentences up to the words the encoder sees) and trigger length,
both ways are timed alternately within every repeat; the medians, their ratio (screened /
every run), the share of controls given the same run and the largest loss of the screened
choice's mean log-odds against the best run go to bench/results/control_runs.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from intake_forgery import workspace_outputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.intake.phrase import (  # noqa: E402
    PhraseParams,
    RunSearch,
    _runs_like,
    _unique,
    sample_sentences,
    strongest_runs,
    target_log_odds,
)
from mudjack.io import write_json  # noqa: E402
from mudjack.triggers import TextTrigger  # noqa: E402

CONTROLS = 20


def long_reviews(sentences: np.ndarray, words: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` reviews of `words` words, each joined from randomly drawn `sentences`."""
    reviews = []
    for _ in range(count):
        joined: list[str] = []
        while len(joined) < words:
            joined += str(sentences[int(rng.integers(len(sentences)))]).split()
        reviews.append(" ".join(joined[:words]))
    return np.asarray(reviews, dtype=np.str_)


def distinct_runs(exemplars: np.ndarray, trigger: TextTrigger) -> int:
    """How many distinct runs of the trigger's word count the controls hold."""
    return len(_unique([_runs_like(str(e).split(), trigger) for e in exemplars]))


def compare(scenario: Any, exemplars: np.ndarray, trigger: TextTrigger, search: RunSearch, *,
            budget: int, repeats: int) -> dict[str, Any]:
    """Every run against the screen on one control set: times, agreement, effect lost."""
    screened = RunSearch(search.sentences, search.score, search.seed, budget=budget)
    ways = {"every_run": search, "screened": screened}
    encoder, adapter = scenario.deployed.encoder, scenario.deployed.adapter

    def choose(way: RunSearch) -> list[TextTrigger]:
        return strongest_runs(encoder, adapter, exemplars, trigger, way)

    choose(search)  # warm-up, not timed
    times: dict[str, list[float]] = {name: [] for name in ways}
    chosen: dict[str, list[TextTrigger]] = {}
    for _ in range(repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            chosen[name] = choose(way)
            times[name].append(time.perf_counter() - start)
    effect = {name: target_log_odds(encoder, adapter, search.sentences, runs, search.score,
                                    search.seed).mean(1) for name, runs in chosen.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    same = [a == b for a, b in zip(chosen["every_run"], chosen["screened"], strict=True)]
    return {"words": int(max(len(str(e).split()) for e in exemplars)),
            "runs": distinct_runs(exemplars, trigger),
            "seconds": {name: round(value, 2) for name, value in median.items()},
            "ratio": round(median["screened"] / median["every_run"], 3),
            "same_run": float(np.mean(same)),
            "largest_log_odds_lost": round(float((effect["every_run"] - effect["screened"]).max()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="minilm-sst2")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 3], help="trigger word counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "control_runs.json")
    args = parser.parse_args()
    out = args.out.resolve()
    torch.set_num_threads(args.threads)
    scenario = workspace_outputs(args.scenario)
    task, target, rng = scenario.task, scenario.target, np.random.default_rng(args.seed)
    phrase = PhraseParams()
    search = RunSearch(sample_sentences(task.train.x[task.train.y != target], phrase.samples, args.seed),
                       scenario.deployed.log_prob(task.name, target), args.seed)
    own = task.train.x[task.train.y == target]
    seen = getattr(scenario.deployed.adapter, "words_seen", None) or 128
    sets = {"short": own[rng.choice(len(own), CONTROLS, replace=False)],
            "long": long_reviews(own, seen, CONTROLS, rng)}
    result: dict[str, Any] = {"scenario": args.scenario, "threads": args.threads, "repeats": args.repeats,
                              "budget": phrase.control_runs, "controls": CONTROLS, "sets": {}}
    for name, exemplars in sets.items():
        for length in args.lengths:
            trigger = TextTrigger(tuple(["x"] * length))
            row = compare(scenario, exemplars, trigger, search, budget=phrase.control_runs,
                          repeats=args.repeats)
            result["sets"][f"{name}_{length}"] = row
            print(name, length, row, flush=True)
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
