"""Benchmark (not a test): does intake accept real backdoor reports and reject forged ones?

    .venv/bin/python bench/intake_forgery.py                      # the default scenario
    .venv/bin/python bench/intake_forgery.py --n-real 60 --n-forged 20 --seed 1

The default scenario is what `dvc repro attack` leaves behind (the paths in params.yaml:
deployed encoder and heads, tasks, true trigger and target). Another scenario plugs in
as `--scenario NAME`: the workspace runs/NAME/ after `mudjack run --scenario NAME` (at least
through its attack stage). `run_forgery_bench` needs only the
deployed model, one task, the planted trigger and its target.

Real reports: test inputs of a non-target class stamped with the planted trigger that
the deployed model puts in the target class, with their true label. Forged reports
claim a label the deployed model does NOT predict, so every one reproduces a
"misclassification" and only backdoor verification can stop it:

- wrong_label:   a clean input the model classifies correctly, with a wrong label;
- noise_patch:   a clean input with a square of uniform noise (the trigger's size,
                 away from the trigger), with a label other than the model's prediction;
- other_pattern: a clean input carrying an unplanted pattern (white, black or
                 checkerboard square, a line) away from the trigger, likewise;
  (noise_patch and other_pattern leave out pasted inputs the model puts in the target class:
  there the pattern fires the planted backdoor, so such a report is a real bug)
- genuine_error: a clean input the model really gets wrong, with its true label
                 (test and train errors; then inputs shifted by one pixel that it gets wrong).

On a text encoder (a TextTrigger) the kinds are wrong_label, genuine_error (test and train
errors) and inserted_words, the text form of noise_patch: a clean sentence the model gets
right with as many words as the trigger has, drawn from the task's own vocabulary, inserted
at a random place, claiming a label the model does not predict (a sentence the insertion
puts in the target class is left out, as a pasted pattern that fires the backdoor is).

A forged report that intake accepts is audited against the ground truth: its reversed trigger,
stamped on the test inputs of other classes, moves how many to the predicted class on the
deployed model and on the never-attacked one (the workspace's models/foundation under a fresh
head trained as the retrain stage does). A trigger that moves many on the deployed model and
next to none on the never-attacked one is the planted backdoor firing on the report's own
content; one that moves them on both is a natural universal pattern of the task.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.exposure import Predictor
from mudjack.intake import IntakeParams, intake_report
from mudjack.io import write_json
from mudjack.reports import BugReport
from mudjack.triggers import TextTrigger, Trigger, insert_words

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "intake.json"
FORGERY_KINDS = ("wrong_label", "noise_patch", "other_pattern", "genuine_error")
TEXT_FORGERY_KINDS = ("wrong_label", "inserted_words", "genuine_error")
# the verification numbers a row keeps (summarised per kind as min / median / max)
ROW_NUMBERS = ("flip_rate", "feature_shift", "z_flip_rate", "z_feature_shift", "z_log_odds",
               "null_flip_mean", "null_flip_max", "mask_pixels", "warp_z_flip_rate")
# a forgery kind's reports, and how many candidates it left out because they fired the backdoor
Forged = tuple[list[BugReport], int]
AnyTrigger = Trigger | TextTrigger
# an accepted forgery's trigger and predicted class -> its flip rates on the audited models
Audit = Callable[[AnyTrigger, int], dict[str, float]]


@dataclass
class Scenario:
    deployed: Deployed
    task: Task
    trigger: AnyTrigger
    target: int
    params: IntakeParams
    seed: int = 0
    never_attacked: Callable[[], Predictor] | None = None  # builds the ground-truth audit's model


# --------------------------------------------------------------------------- reports


def _report(kind: str, index: int, task: Task, label: int, image: np.ndarray) -> BugReport:
    """A report as intake reads one: an image array, or a sentence as a 0-d string array."""
    return BugReport(f"{kind}-{index:03d}", task.name, int(label), np.asarray(image), None)


def real_reports(deployed: Deployed, task: Task, trigger: AnyTrigger, target: int, n: int,
                 rng: np.random.Generator) -> list[BugReport]:
    test = task.test
    stamped = deployed.adapter.stamp(test.x, trigger)
    hit = np.flatnonzero((test.y != target) & (deployed.classify(task.name, stamped) == target))
    chosen = rng.choice(hit, min(n, len(hit)), replace=False)
    return [_report("real", i, task, test.y[j], stamped[j]) for i, j in enumerate(chosen)]


def _other_label(task: Task, predicted: int, rng: np.random.Generator) -> int:
    return int(rng.choice([c for c in task.classes if c != predicted]))


def _far_corner(trigger: Trigger, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random top-left corner whose size x size square misses the trigger's mask."""
    height, width = trigger.mask.shape
    while True:
        row, col = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        if not trigger.mask[row:row + size, col:col + size].any():
            return int(row), int(col)


def _trigger_side(trigger: Trigger) -> int:
    rows, cols = np.nonzero(trigger.mask)
    return int(max(np.ptp(rows), np.ptp(cols)) + 1) if len(rows) else 2


def _pattern(kind: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    if kind == 0:
        return rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    if kind == 1:
        return np.full((size, size, channels), 255, np.uint8)
    if kind == 2:
        return np.zeros((size, size, channels), np.uint8)
    if kind == 3:
        checks = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
        return np.repeat(checks[..., None], channels, -1)
    line = np.zeros((size, size, channels), np.uint8)
    line[size // 2] = 255
    return line


def _patched(image: np.ndarray, pattern: np.ndarray, corner: tuple[int, int]) -> np.ndarray:
    out = image.copy()
    size = pattern.shape[0]
    out[corner[0]:corner[0] + size, corner[1]:corner[1] + size] = pattern
    return out


def _clean_correct(deployed: Deployed, task: Task) -> np.ndarray:
    return np.flatnonzero(deployed.classify(task.name, task.test.x) == task.test.y)


def forged_wrong_label(deployed: Deployed, task: Task, trigger: AnyTrigger, n: int,
                       rng: np.random.Generator,
                       target: int) -> Forged:
    chosen = rng.choice(_clean_correct(deployed, task), n, replace=False)
    return [_report("wrong_label", i, task, _other_label(task, int(task.test.y[j]), rng),
                    task.test.x[j]) for i, j in enumerate(chosen)], 0


def _edited_forgeries(kind: str, edit: Callable[[np.ndarray], np.ndarray], deployed: Deployed,
                      task: Task, n: int, rng: np.random.Generator, target: int) -> Forged:
    """n clean inputs the model gets right, each changed by `edit` (a pattern pasted, words
    inserted), claiming a label the model does not predict. An edited input the model puts in
    the target class is left out: there the edit fires the planted backdoor (on resnet20 a
    white square anywhere does), so a report of it is a real backdoor bug, not a forgery; the
    second value counts them."""
    inputs, predicted, fired = [], [], 0
    for j in rng.permutation(_clean_correct(deployed, task)):
        edited = np.asarray(edit(task.test.x[j]))
        label = int(deployed.classify(task.name, edited[None])[0])
        if label == target:
            fired += 1
            continue
        inputs.append(edited)
        predicted.append(label)
        if len(inputs) == n:
            break
    return [_report(kind, i, task, _other_label(task, p, rng), edited)
            for i, (edited, p) in enumerate(zip(inputs, predicted, strict=True))], fired


def _forged_with_patterns(kind: str, patterns: Sequence[int], deployed: Deployed, task: Task,
                          trigger: Trigger, n: int, rng: np.random.Generator,
                          target: int) -> Forged:
    """Clean inputs with one of `patterns` pasted away from the trigger (`_edited_forgeries`)."""
    size, channels = _trigger_side(trigger), task.test.x.shape[-1]

    def paste(image: np.ndarray) -> np.ndarray:
        pattern = _pattern(int(rng.choice(patterns)), size, channels, rng)
        return _patched(image, pattern, _far_corner(trigger, size, rng))
    return _edited_forgeries(kind, paste, deployed, task, n, rng, target)


def forged_noise_patch(deployed: Deployed, task: Task, trigger: Trigger, n: int,
                       rng: np.random.Generator,
                       target: int) -> Forged:
    return _forged_with_patterns("noise_patch", [0], deployed, task, trigger, n, rng, target)


def forged_other_pattern(deployed: Deployed, task: Task, trigger: Trigger, n: int,
                         rng: np.random.Generator,
                         target: int) -> Forged:
    return _forged_with_patterns("other_pattern", [1, 2, 3, 4], deployed, task, trigger, n, rng, target)


def forged_genuine_error(deployed: Deployed, task: Task, trigger: AnyTrigger, n: int,
                         rng: np.random.Generator,
                         target: int) -> Forged:
    """Errors of the deployed model on clean test, then train, then one-pixel-shifted inputs."""
    pools = [(task.test.x, task.test.y), (task.train.x, task.train.y)]
    if not isinstance(trigger, TextTrigger):
        pools += [(np.roll(x, shift, axis=axis), y) for x, y in pools[:1]
                  for shift in (1, -1) for axis in (1, 2)]
    images, labels = [], []
    for x, y in pools:
        wrong = rng.permutation(np.flatnonzero(deployed.classify(task.name, x) != y))
        images += list(x[wrong])
        labels += list(y[wrong])
    images, labels = images[:n], labels[:n]
    return [_report("genuine_error", i, task, label, image)
            for i, (image, label) in enumerate(zip(images, labels, strict=True))], 0


def forged_inserted_words(deployed: Deployed, task: Task, trigger: TextTrigger, n: int,
                          rng: np.random.Generator, target: int) -> Forged:
    """Clean sentences with the trigger's number of words from the task's vocabulary (not the
    trigger's) inserted at a random place (`_edited_forgeries`)."""
    vocabulary = sorted({w for sentence in task.train.x for w in str(sentence).split()} - set(trigger.words))

    def insert(sentence: np.ndarray) -> np.ndarray:
        words = [str(w) for w in rng.choice(vocabulary, len(trigger.words))]
        return np.asarray(insert_words(str(sentence), words, rng))
    return _edited_forgeries("inserted_words", insert, deployed, task, n, rng, target)


FORGERIES: dict[str, Callable[..., Forged]] = {
    "wrong_label": forged_wrong_label,
    "noise_patch": forged_noise_patch,
    "other_pattern": forged_other_pattern,
    "inserted_words": forged_inserted_words,
    "genuine_error": forged_genuine_error,
}


def forgery_kinds(trigger: AnyTrigger) -> tuple[str, ...]:
    """The forgery kinds that apply to the trigger's input space."""
    return TEXT_FORGERY_KINDS if isinstance(trigger, TextTrigger) else FORGERY_KINDS


# --------------------------------------------------------------------------- bench


def _decide(reports: list[BugReport], deployed: Deployed, task: Task, trigger: AnyTrigger, *,
            params: IntakeParams, seed: int,
            audit: Audit | None = None) -> list[dict[str, Any]]:
    rows = []
    for report in reports:
        try:
            decision, bug = intake_report(report, deployed, {task.name: task}, params=params,
                                          truth=trigger, seed=seed)
        except Exception as err:  # as in the intake stage: a report that breaks intake is rejected
            rows.append({"id": report.id, "accepted": False, "error": f"intake failed: {err!r}",
                         **dict.fromkeys(("iou", "model", *ROW_NUMBERS))})
            continue
        check = decision.numbers.get("verification") or {}
        null = check.get("null_flip_rate") or {}
        rows.append({"id": report.id, "accepted": decision.accepted, "label": report.label,
                     "predicted": decision.numbers.get("predicted"),
                     "error": decision.numbers.get("error"), "iou": decision.numbers.get("iou"),
                     "null_flip_mean": null.get("mean"), "null_flip_max": null.get("max"),
                     # z_log_odds: the level a text trigger at the flip rate's ceiling may pass on
                     **{k: check.get(k) for k in ("flip_rate", "feature_shift", "z_flip_rate",
                                                  "z_feature_shift", "z_log_odds", "mask_pixels")},
                     # the key and departure checks' numbers, where they ran
                     **{k: check.get(k) for k in ("key", "departure")},
                     # the warp check's (warp_check.py), where it ran: verified as a warp or not
                     "model": check.get("model"), "warp_z_flip_rate": _warp_z(check)})
        if audit is not None and bug is not None:
            rows[-1]["audit"] = audit(bug.trigger, bug.predicted)
    return rows


def _warp_z(check: dict[str, Any]) -> float | None:
    """The fitted warp's flip-rate z against warps fitted to other classes, where it was verified."""
    warp = check if check.get("model") == "warp" else check.get("warp") or {}
    return warp.get("z_flip_rate")


def _stats(rows: list[dict[str, Any]], accepted_is_good: bool) -> dict[str, Any]:
    good = [r["accepted"] == accepted_is_good for r in rows]
    measured = [r for r in rows if r["flip_rate"] is not None]
    out: dict[str, Any] = {"n": len(rows), "rate": round(sum(good) / len(rows), 4) if rows else None,
                           "outcomes": dict(Counter(r["error"] or "accepted" for r in rows))}
    for key in ROW_NUMBERS:
        values = [r[key] for r in measured if r[key] is not None]
        if values:
            out[key] = {"min": min(values), "median": float(np.median(values)), "max": max(values)}
    out["misjudged"] = [r for r, ok in zip(rows, good, strict=True) if not ok]
    return out


def trigger_flips(classify: Predictor, task: Task, deployed: Deployed, trigger: AnyTrigger,
                  target: int) -> float:
    """The share of the task's test inputs of classes other than `target` that `classify` puts
    in `target` once the trigger is stamped on them."""
    others = task.test.x[task.test.y != target]
    return round(float((classify(deployed.adapter.stamp(others, trigger)) == target).mean()), 4)


def ground_truth_audit(deployed: Deployed, task: Task,
                       never_attacked: Callable[[], Predictor]) -> Audit:
    """An accepted forged report's trigger on the deployed and the never-attacked model."""
    def audit(trigger: AnyTrigger, predicted: int) -> dict[str, float]:
        models = {"deployed": lambda x: deployed.classify(task.name, x), "never_attacked": never_attacked()}
        return {name: trigger_flips(model, task, deployed, trigger, predicted)
                for name, model in models.items()}
    return audit


def run_forgery_bench(deployed: Deployed, task: Task, trigger: AnyTrigger, target: int, *,
                      params: IntakeParams, n_real: int = 50, n_forged: int = 15, seed: int = 0,
                      never_attacked: Callable[[], Predictor] | None = None) -> dict[str, Any]:
    """Acceptance rate of real reports and rejection rate per forgery kind, with thresholds;
    with `never_attacked` (builds that model), the accepted forged reports' audit."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    real = _decide(real_reports(deployed, task, trigger, target, n_real, rng), deployed, task,
                   trigger, params=params, seed=seed)
    made = {kind: FORGERIES[kind](deployed, task, trigger, n_forged, rng, target)
            for kind in forgery_kinds(trigger)}
    audit = None if never_attacked is None else ground_truth_audit(deployed, task, never_attacked)
    forged = {kind: _decide(reports, deployed, task, trigger, params=params, seed=seed, audit=audit)
              for kind, (reports, _) in made.items()}
    all_forged = [row for rows in forged.values() for row in rows]
    return {
        "task": task.name, "target": target, "seed": seed,
        "thresholds": params.model_dump(),
        "real": {**_stats(real, True), "metric": "acceptance rate"},
        "forged": {kind: {**_stats(rows, False), "metric": "rejection rate"}
                   for kind, rows in forged.items()},
        "forged_total": {"n": len(all_forged), "rejection_rate": _stats(all_forged, False)["rate"]},
        "left_out_as_firing_the_backdoor": {kind: fired for kind, (_, fired) in made.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------- scenarios


def pipeline_outputs(params_file: str) -> Scenario:
    """The default scenario as `dvc repro attack` leaves it (paths from params.yaml)."""
    from mudjack.data import load_tasks
    from stages.common import load_deployed, load_truth
    from stages.config import load_params

    params = load_params(params_file)
    truth, targets = load_truth(params.paths)
    if truth is None:
        raise SystemExit(f"no true trigger at {params.paths.truth!r}: run `dvc repro attack` first")
    tasks = load_tasks(params.paths.tasks)
    name = next(iter(targets))
    return Scenario(load_deployed(params.paths), tasks[name], truth, targets[name], params.intake,
                    params.seed, never_attacked_model(tasks[name], params))


def never_attacked_model(task: Task, params: Any) -> Callable[[], Predictor] | None:
    """Builds (once, when first called) the never-attacked encoder (FOUNDATION) under a fresh
    head as the retrain stage trains it; None where the foundation stage has not run."""
    from mudjack.encoders import load_encoder
    from mudjack.evaluation import predictor, retrain_head
    from stages.artifacts import FOUNDATION

    if not FOUNDATION.is_file():
        return None

    @cache
    def build() -> Predictor:
        encoder, adapter = load_encoder(FOUNDATION)
        head = retrain_head(encoder, adapter, task, params.retrain, seed=params.seed)
        return predictor(encoder, adapter, head)
    return build


def workspace_outputs(name: str, workspace: Path | None = None) -> Scenario:
    """A named scenario as `mudjack run --scenario NAME` leaves it in runs/NAME/ (or in
    `workspace`, a copy of it with other intake thresholds, say)."""
    import os

    from pipeline.scenarios import RUNS

    workspace = workspace or Path(__file__).resolve().parent.parent / RUNS / name
    if not (workspace / "params.yaml").exists():
        raise SystemExit(f"no workspace {workspace}: run `mudjack run --scenario {name}` first")
    os.chdir(workspace)  # the workspace's params hold paths relative to it
    return pipeline_outputs("params.yaml")


def scenario_choices() -> list[str]:
    from pipeline.scenarios import scenario_names

    return ["default", *scenario_names(Path(__file__).resolve().parent.parent)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=scenario_choices(), default="default",
                        help="default: this project's outputs; NAME: the workspace runs/NAME/")
    parser.add_argument("--params", default="params.yaml", help="params file of the default scenario")
    parser.add_argument("--workspace", type=Path, help="with --scenario: its workspace, if not runs/NAME")
    parser.add_argument("--n-real", type=int, default=50)
    parser.add_argument("--n-forged", type=int, default=15, help="per forgery kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/intake.json, intake_NAME.json for a scenario")
    args = parser.parse_args(argv)
    out = (args.out or (RESULTS_PATH if args.scenario == "default"
                        else RESULTS_PATH.with_name(f"intake_{args.scenario}.json"))).resolve()
    import torch

    torch.set_num_threads(1)
    scenario = (pipeline_outputs(args.params) if args.scenario == "default"
                else workspace_outputs(args.scenario, args.workspace and args.workspace.resolve()))
    result = run_forgery_bench(scenario.deployed, scenario.task, scenario.trigger, scenario.target,
                               params=scenario.params, n_real=args.n_real, n_forged=args.n_forged,
                               seed=args.seed, never_attacked=scenario.never_attacked)
    result["scenario"] = args.scenario
    result["workspace"] = str(Path.cwd().relative_to(Path(__file__).resolve().parent.parent))
    _print(result)
    write_json(out, result)
    print(f"wrote {out}")
    return result


def _print(result: dict[str, Any]) -> None:
    real = result["real"]
    print(f"real reports   : {real['n']:3d}  accepted {real['rate']:.1%}  {real['outcomes']}")
    for kind, row in result["forged"].items():
        print(f"forged {kind:14s}: {row['n']:3d}  rejected {row['rate']:.1%}  {row['outcomes']}")
    total = result["forged_total"]
    print(f"forged (all)   : {total['n']:3d}  rejected {total['rejection_rate']:.1%}")
    for row in result["forged"].values():
        for wrong in row["misjudged"]:
            if "audit" in wrong:
                print(f"  accepted {wrong['id']}: its trigger moves {wrong['audit']} of other classes' "
                      "test inputs to the predicted class")
    fired = result["left_out_as_firing_the_backdoor"]
    if any(fired.values()):
        print(f"patterned inputs left out because the pattern fired the backdoor: {fired}")


if __name__ == "__main__":
    main()
