"""Backdoor exposure of every downstream task on the shared encoder, before and after a repair.

Triggers. Each true trigger the scenario knows (named `truth`, then `truth:1`, `truth:2`, ...
for a backdoor with several) and each accepted bug's reversed trigger (`bug:<id>`) is
stamped on the test inputs of EVERY task, not only the one that reported. Each is
measured on the backdoored model (backdoored encoder + its retrained head) and the patched
one (patched encoder + its head): ASR, TBA and flip_asr (mudjack.metrics).

Target of a trigger on a task. The target the truth names for that task when it names one
(`target_from: known`). Otherwise inferred (`inferred`): the class c that the backdoored
model's triggered predictions go to most, counted over the test inputs not labelled c (so
that a large class does not win by its size). Evidence: `share`, that fraction, and
`clean_share`, the same fraction without the trigger.

Exposure (a paired test, free of the number of classes and of the test-set size). Over the
test inputs not labelled c, `moved_in` counts those the trigger sends into c (clean
prediction not c, triggered c) and `moved_out` those it takes out of c. Without a backdoor
toward c a trigger that changes a prediction is as likely to take it out of c as into it,
so moved_in ~ Binomial(moved_in + moved_out, 1/2) (McNemar's exact test). The trigger
exposes the task when the one-sided p-value is below LEVEL (0.01), divided by the number
of classes when c was inferred (c was picked as the most-moved class: Bonferroni). A task
is exposed when any trigger exposes it; an unexposed task is reported with its evidence
(`exposed: false`) and passes the ASR gate (pipeline/gates.py).

Headline (the task's `backdoored` / `patched` numbers in metrics.json): the WORST trigger:
the highest ASR after the repair (what the gate must catch), ties broken by the higher ASR
before. It is chosen among the exposing true triggers when any exposes the task (a
reversed trigger is only an estimate of a true one; its numbers stay in the detail), else
among the exposing reversed triggers, else (unexposed task) among all triggers.

Several heads per model (the retrain stage's `retrain.heads`, seeds seed, seed+1, ...): a
predictor then gives one row of predictions per head. The target and the paired test use the
first head; clean accuracy and each attack metric are the mean over the heads, and `per_head`
(in a trigger's record and beside the headline) lists each head's value. On a weak encoder one
head's ASR moves by 0.02 from seed to seed; the mean is the estimate a gate should judge.

A bug accepted on inputs of its own reported class alone (a source-specific backdoor: intake's
second search, mudjack/intake/decision.py) has its reversed trigger measured on the test
inputs of that class only (`source_class` in its record), on the task that reported it: over
every class, a trigger that fires for one source class moves few inputs, and the task's
headline would not show it.

A trigger that does not fit a task's inputs (a mask of another image size, a text trigger on
images), or whose known target is not one of the task's classes, is not measured there;
`exposure.not_measured` names it with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import binomtest

from mudjack.bugs import Bug
from mudjack.data import LabelledSet, is_text, iter_batches
from mudjack.metrics import clean_accuracy, evaluate, non_target
from mudjack.triggers import TextTrigger, Trigger

LEVEL = 0.01
STAMP_BATCH = 512  # images stamped and classified at a time
MODELS = ("backdoored", "patched")  # before / after the repair
ATTACK_METRICS = ("asr", "tba", "flip_asr", "target_tba", "anti_flip")

# raw inputs -> predicted class per input: (n,), or (heads, n) for several heads on one encoder
Predictor = Callable[[np.ndarray], np.ndarray]
Stamp = Callable[[np.ndarray, Any], np.ndarray]  # (raw inputs, trigger) -> triggered inputs


@dataclass(frozen=True)
class NamedTrigger:
    """A trigger to measure, named by its source, with the targets it is known to have."""

    name: str  # "truth", "truth:<i>" or "bug:<id>"
    trigger: Trigger | TextTrigger
    targets: dict[str, int] = field(default_factory=dict)  # task -> known target
    sources: dict[str, int] = field(default_factory=dict)  # task -> the one class it fires on

    @property
    def true(self) -> bool:
        return self.name.startswith("truth")


def named_triggers(truths: Sequence[tuple[Trigger | TextTrigger, dict[str, int]]],
                   bugs: Sequence[Bug]) -> list[NamedTrigger]:
    """The true triggers (with their per-task targets) first, then every bug's reversed one."""
    known = [NamedTrigger("truth" if i == 0 else f"truth:{i}", trigger, dict(targets))
             for i, (trigger, targets) in enumerate(truths)]
    return known + [NamedTrigger(f"bug:{bug.id}", bug.trigger, sources=bug_source(bug)) for bug in bugs]


def bug_source(bug: Bug) -> dict[str, int]:
    """{task: class} for a bug accepted on inputs of its reported class alone (its record's
    `source_pass` passed), else {}."""
    second = bug.record.get("source_pass")
    if not isinstance(second, dict) or second.get("passed") is not True:
        return {}
    return {bug.task: int(bug.label)}


@dataclass(frozen=True)
class Evidence:
    """How a trigger's target on a task was chosen, and whether the trigger exposes the task."""

    target: int
    target_from: str  # "known" or "inferred"
    share: float
    clean_share: float
    moved_in: int
    moved_out: int
    p_value: float
    exposed: bool


def class_shares(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class c: the fraction of the inputs not labelled c that are predicted as c."""
    shares = np.zeros(n_classes)
    for c in range(n_classes):
        others = labels != c
        shares[c] = (predictions[others] == c).mean() if others.any() else 0.0
    return shares


def infer_target(labels: np.ndarray, triggered: np.ndarray, n_classes: int) -> int:
    """The class the triggered predictions go to most (lowest index on a tie)."""
    return int(class_shares(labels, triggered, n_classes).argmax())


def evidence(labels: np.ndarray, clean: np.ndarray, triggered: np.ndarray, *, target: int,
             inferred: bool, n_classes: int, level: float = LEVEL) -> Evidence:
    """The paired test of the module docstring for `target` on one model's predictions."""
    others = non_target(labels, target)
    into, was = triggered[others] == target, clean[others] == target
    moved_in, moved_out = int((into & ~was).sum()), int((was & ~into).sum())
    moved = moved_in + moved_out
    p_value = float(binomtest(moved_in, moved, 0.5, alternative="greater").pvalue) if moved else 1.0
    bound = level / n_classes if inferred else level
    return Evidence(target, "inferred" if inferred else "known",
                    float(into.mean()) if others.any() else 0.0,
                    float(was.mean()) if others.any() else 0.0,
                    moved_in, moved_out, p_value, p_value < bound)


@dataclass(frozen=True)
class TaskModels:
    """One task's test set and its classifier before and after the repair."""

    test: LabelledSet
    n_classes: int
    predictors: dict[str, Predictor]  # MODELS -> predictor
    stamp: Stamp
    # the (H, W) `stamp` resizes inputs to before stamping (an adapter that resizes its
    # inputs: its input side); None: inputs are stamped at their own size
    side: tuple[int, int] | None = None

    def clean_predictions(self) -> dict[str, np.ndarray]:
        return {model: self.predictors[model](self.test.x) for model in MODELS}


def triggered_predictions(models: TaskModels, trigger: Trigger | TextTrigger, *,
                          batch_size: int = STAMP_BATCH) -> dict[str, np.ndarray]:
    """Each model's predictions on the test inputs with `trigger` stamped, a batch of images
    at a time (a test set of 224 px images is never stamped whole in memory). Sentences are
    stamped in one go: the text stamp draws its insertion points from one seeded stream."""
    x = models.test.x
    size = len(x) if is_text(x) else batch_size
    parts: dict[str, list[np.ndarray]] = {model: [] for model in MODELS}
    for rows in iter_batches(x, max(1, size)):
        stamped = models.stamp(rows, trigger)
        for model in MODELS:
            parts[model].append(np.asarray(models.predictors[model](stamped)))
    return {model: np.concatenate(chunks, axis=-1) if chunks else np.zeros(0, dtype=np.int64)
            for model, chunks in parts.items()}


def head_scores(clean: np.ndarray, labels: np.ndarray, triggered: np.ndarray, *,
                target: int) -> dict[str, list[float]]:
    """Each head's attack metrics for `target` (`clean` and `triggered` hold
    the predictions on every test input: one row per head, or one head as a 1-D array)."""
    kept = non_target(labels, target)
    rows = [evaluate(c, labels, t[kept], target=target, target_triggered=t[~kept])
            for c, t in zip(np.atleast_2d(clean), np.atleast_2d(triggered), strict=True)]
    return {key: [row[key] for row in rows] for key in ATTACK_METRICS}


def first_head(predictions: np.ndarray) -> np.ndarray:
    """The first head's predictions (the one the paired test and the target use)."""
    return np.atleast_2d(predictions)[0]


def measure_trigger(task: str, models: TaskModels, named: NamedTrigger,
                    clean: dict[str, np.ndarray], *, level: float = LEVEL) -> dict[str, Any]:
    """One trigger on one task: its target with the evidence, and the attack metrics of each
    model (backdoored, patched) on that target."""
    source = named.sources.get(task)
    if source is not None and (models.test.y == source).any():  # none of that class: every class
        models, clean = of_class(models, clean, source)
    else:
        source = None
    labels = models.test.y
    triggered = triggered_predictions(models, named.trigger)
    before, before_triggered = first_head(clean["backdoored"]), first_head(triggered["backdoored"])
    inferred = task not in named.targets
    target = (infer_target(labels, before_triggered, models.n_classes) if inferred
              else named.targets[task])
    proof = evidence(labels, before, before_triggered, target=target,
                     inferred=inferred, n_classes=models.n_classes, level=level)
    record: dict[str, Any] = {**asdict(proof), **({"source_class": source} if source is not None else {})}
    scores = {model: head_scores(clean[model], labels, triggered[model], target=target)
              for model in MODELS}
    for model in MODELS:
        record[model] = {k: float(np.mean(scores[model][k])) for k in ATTACK_METRICS}
    if len(scores["backdoored"]["asr"]) > 1:
        record["per_head"] = {model: {k: scores[model][k] for k in ATTACK_METRICS} for model in MODELS}
    return record


def of_class(models: TaskModels, clean: dict[str, np.ndarray],
             label: int) -> tuple[TaskModels, dict[str, np.ndarray]]:
    """The task's models and clean predictions on its test inputs of class `label` alone."""
    index = np.flatnonzero(models.test.y == label)
    return (replace(models, test=models.test.subset(index)),
            {model: np.asarray(rows)[..., index] for model, rows in clean.items()})


def _severity(record: dict[str, Any]) -> tuple[float, float]:
    return record["patched"]["asr"], record["backdoored"]["asr"]


def worst_trigger(records: dict[str, dict[str, Any]], true_names: set[str]) -> str | None:
    """The headline trigger of a task (the rule is in the module docstring); None if none."""
    exposing = [name for name, r in records.items() if r["exposed"]]
    pool = ([n for n in exposing if n in true_names] or exposing) or list(records)
    if not pool:
        return None
    return max(pool, key=lambda name: _severity(records[name]))  # first wins a tie


def misfit(trigger: Trigger | TextTrigger, inputs: np.ndarray, *,
           side: tuple[int, int] | None = None) -> str | None:
    """Why `trigger` cannot be stamped on `inputs` (resized to `side` first when given), or
    None when it can."""
    trigger_kind = "text" if isinstance(trigger, TextTrigger) else "image"
    input_kind = "text" if is_text(inputs) else "image"
    if trigger_kind != input_kind:
        return f"a {trigger_kind} trigger on {input_kind} inputs"
    shape = tuple(side or inputs.shape[1:3])
    if input_kind == "image" and trigger.mask.shape != shape:
        return f"trigger of {trigger.mask.shape} on inputs of {shape}"
    return None


def foreign_target(named: NamedTrigger, task: str, n_classes: int) -> str | None:
    """Why the target the truth names for `task` cannot be measured (not one of its classes),
    or None."""
    target = named.targets.get(task)
    if target is None or 0 <= target < n_classes:
        return None
    return f"its known target {target} is not a class of this task (0 to {n_classes - 1})"


def task_exposure(task: str, models: TaskModels, triggers: Sequence[NamedTrigger],
                  *, level: float = LEVEL) -> dict[str, Any]:
    """Every trigger on one task; the headline numbers per model (clean accuracy and the worst
    trigger's attack metrics; None when no trigger is measured) and the exposure record."""
    clean = models.clean_predictions()
    reasons = {t.name: misfit(t.trigger, models.test.x, side=models.side)
               or foreign_target(t, task, models.n_classes) for t in triggers}
    records = {t.name: measure_trigger(task, models, t, clean, level=level)
               for t in triggers if reasons[t.name] is None}
    worst = worst_trigger(records, {t.name for t in triggers if t.true})
    result: dict[str, Any] = {}
    accuracy = {model: [clean_accuracy(row, models.test.y) for row in np.atleast_2d(clean[model])]
                for model in MODELS}
    for model in MODELS:
        attack = records[worst][model] if worst else dict.fromkeys(ATTACK_METRICS)
        result[model] = {"clean_acc": float(np.mean(accuracy[model])), **attack}
    if len(accuracy["backdoored"]) > 1:
        spread = records[worst].get("per_head", {}) if worst else {}
        result["per_head"] = {model: {"clean_acc": accuracy[model], **spread.get(model, {})}
                              for model in MODELS}
    exposed = any(r["exposed"] for r in records.values()) if records else None
    result["exposure"] = {"exposed": exposed, "trigger": worst,
                          "target": records[worst]["target"] if worst else None,
                          "target_from": records[worst]["target_from"] if worst else None,
                          "level": level, "triggers": records,
                          "not_measured": {name: why for name, why in reasons.items() if why}}
    return result


def exposure_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task of a metrics.json: the headline trigger, whether it exposes the task,
    ASR before and after (for the terminal table and the run report)."""
    rows = []
    for name, result in sorted(metrics.get("tasks", {}).items()):
        exposure = result.get("exposure", {})
        rows.append({"task": name, "exposed": exposure.get("exposed"),
                     "trigger": exposure.get("trigger"), "target": exposure.get("target"),
                     "target_from": exposure.get("target_from"),
                     "asr_before": result.get("backdoored", {}).get("asr"),
                     "asr_after": result.get("patched", {}).get("asr")})
    return rows
