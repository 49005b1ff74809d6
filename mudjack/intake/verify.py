"""Backdoor verification: does a report's reversed trigger behave like a backdoor trigger?

A misclassified input is not yet a backdoor bug: it may be an ordinary error, an input
with a wrong claimed label, or noise. A backdoor trigger transfers: stamped on clean
inputs of OTHER classes (a sample of the task's train set that the deployed model
classifies correctly), it must

(a) move their features toward the bug's: the mean cosine to the bug's features rises
    by at least `min_feature_shift`;
(b) flip at least `min_flip_rate` of their deployed predictions to the bug's predicted
    class;
(c) do so because of its pattern, not because it pastes the predicted class's content:
    the same mask filled from a clean input of the predicted class (the control) must
    flip at least `min_flip_margin` fewer of them. A "trigger" reversed from a clean
    input copies stroke pixels of that class, and those flip inputs just as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mudjack.config import Params
from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.features import cosine, extract_features
from mudjack.intake.masks import masked_trigger
from mudjack.triggers import TextTrigger, Trigger, text_control_trigger


class VerifyParams(Params):
    """The `intake.verify` section: whether to verify, and the thresholds of checks (a)-(c)."""

    enabled: bool = True
    samples: int = 100              # clean inputs of other classes the trigger is stamped on
    min_flip_rate: float = 0.8      # (b) fraction flipped to the bug's predicted class
    min_feature_shift: float = 0.3  # (a) rise of their mean cosine to the bug's features
    min_flip_margin: float = 0.8    # (c) flip rate minus the control stamp's flip rate


@dataclass
class Verification:
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def draw_sample(task: Task, predicted: int, size: int, seed: int) -> np.ndarray:
    """Up to `size` train indices of classes other than `predicted` (held out from reversal)."""
    candidates = np.flatnonzero(task.train.y != predicted)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, min(size, len(candidates)), replace=False))


def _correct(deployed: Deployed, task: Task, index: np.ndarray) -> np.ndarray:
    """The indices whose inputs the deployed model classifies correctly."""
    if len(index) == 0:
        return index
    return index[deployed.classify(task.name, task.train.x[index]) == task.train.y[index]]


def control_trigger(trigger: Trigger, exemplar: np.ndarray) -> Trigger:
    """The reversed mask filled with a clean input's pixels instead of the bug's."""
    if isinstance(trigger, TextTrigger):
        return text_control_trigger(trigger, exemplar)
    return masked_trigger(trigger.mask, exemplar)


def verify_trigger(deployed: Deployed, task: Task, bug: np.ndarray, predicted: int,
                   trigger: Trigger | TextTrigger, *, exemplar: np.ndarray | None,
                   sample: np.ndarray, params: VerifyParams) -> Verification:
    """Stamp the reversed trigger on the sample's correctly classified inputs; measure (a)-(c).

    `sample` (train indices of other classes, from `draw_sample`) should be held out from
    the trigger's reversal, so the trigger is judged on inputs it was not fitted to.
    """
    index = _correct(deployed, task, sample)
    if len(index) == 0:
        return Verification(False, {"verify_samples": 0},
                            [f"no correctly classified input of a class other than {predicted}"])
    clean = task.train.x[index]
    numbers = _measure(deployed, task.name, bug, predicted, clean, trigger, exemplar=exemplar)
    failures = _failures(numbers, predicted, params)
    thresholds = params.model_dump(exclude={"enabled"})
    return Verification(not failures, {**numbers, "thresholds": thresholds}, failures)


def _measure(deployed: Deployed, task: str, bug: np.ndarray, predicted: int, clean: np.ndarray,
             trigger: Trigger, *, exemplar: np.ndarray | None) -> dict[str, Any]:
    stamped = deployed.adapter.stamp(clean, trigger)
    features = extract_features(deployed.encoder, deployed.adapter,
                                np.concatenate([bug[None], clean, stamped]))
    bug_features, before, after = features[:1], features[1:1 + len(clean)], features[1 + len(clean):]
    cos_before = float(cosine(before, bug_features).mean())
    cos_after = float(cosine(after, bug_features).mean())
    numbers: dict[str, Any] = {
        "verify_samples": len(clean), "mask_pixels": trigger.pixels,
        "flip_rate": _flip_rate(deployed, task, stamped, predicted),
        "cos_before": round(cos_before, 4), "cos_after": round(cos_after, 4),
        "feature_shift": round(cos_after - cos_before, 4), "control_flip_rate": None,
    }
    if exemplar is not None:
        control = deployed.adapter.stamp(clean, control_trigger(trigger, exemplar))
        numbers["control_flip_rate"] = _flip_rate(deployed, task, control, predicted)
    return numbers


def _flip_rate(deployed: Deployed, task: str, images: np.ndarray, predicted: int) -> float:
    return round(float((deployed.classify(task, images) == predicted).mean()), 4)


def _failures(numbers: dict[str, Any], predicted: int, params: VerifyParams) -> list[str]:
    n, flip, shift = numbers["verify_samples"], numbers["flip_rate"], numbers["feature_shift"]
    failures = []
    if flip < params.min_flip_rate:
        failures.append(f"stamped on {n} clean inputs of other classes, the reversed trigger flips "
                        f"{flip:.2f} of them to class {predicted} (need >= {params.min_flip_rate})")
    if shift < params.min_feature_shift:
        failures.append(f"their mean cosine to the bug's features rises by {shift:.2f} "
                        f"(need >= {params.min_feature_shift})")
    control = numbers["control_flip_rate"]
    if control is not None and flip - control < params.min_flip_margin:
        failures.append(f"the same mask filled from a clean class-{predicted} input flips {control:.2f}: "
                        f"the trigger adds only {flip - control:.2f} (need >= {params.min_flip_margin})")
    return failures
