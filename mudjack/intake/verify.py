"""Backdoor verification: does a report's reversed trigger behave like a backdoor trigger?

A misclassification is not yet a backdoor bug: the report may be an ordinary error, an input
with a wrong claimed label, noise or a pasted pattern. A backdoor trigger transfers: stamped
on clean inputs of OTHER classes that the deployed model gets right (`samples` of them, held
out from the trigger's reversal), it moves them to the bug's predicted class. How far is
"enough" differs by encoder and attack strength (a weak backdoor flips 30 %, resnet20's
features of all classes sit at cosine 0.8-0.9 of each other), so the rule calibrates itself
on the deployed model with a null distribution instead of absolute thresholds: the same
trigger model filled from `controls` clean inputs of the predicted class (trial.py holds the
trial, its controls and the statistics).

The trigger is accepted when its z-score against the controls (their mean and standard
deviation) is at least `min_z_flip` on the flip rate and at least `min_z_pull` on the feature
pull. The flip rate decides (a backdoor bug is a wrong prediction); the pull confirms that the
effect goes through the encoder, the part that is patched, and not through a quirk of the
head. Its bar is lower because a reversed mask padded around the trigger, filled with the
predicted class's content, pulls features toward the bug's class too: a real weak backdoor's
16-pixel mask scores z 2.5-4 on the pull while its flip rate scores 6-17. The flip-rate floor
of the null's standard deviation is also the sanity floor: with a null that flips nothing the
trigger must flip min_z_flip * sqrt(c(1 - c) / n) of the inputs (0.15 on 10 classes, 0.25 on 2
with n = 100); a floor of "more than chance" would refuse a binary task's backdoor of ASR 0.4.

Two checks follow the plain null:
- a mask the null refuses may still be a key to the predicted class, one that fires the
  backdoor whatever fills it (`key`, key.py);
- a trigger whose optimised pattern departs from the bug's pixels must also give back the
  reported label when taken off the bug, or keep its flips against controls that keep the
  departure (`departure`, departure.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from mudjack.config import Params
from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.intake.departure import departure_check
from mudjack.intake.key import is_place, key_check
from mudjack.intake.phrase import RunSearch
from mudjack.intake.trial import AnyTrigger, Trial, departs, z_failures
from mudjack.io import sha256_bytes
from mudjack.triggers import TextTrigger


class VerifyParams(Params):
    """The `intake.verify` section: whether to verify, sample and null sizes, the z margin."""

    enabled: bool = True
    samples: int = Field(100, ge=10)           # held-out clean inputs of other classes
    controls: int = Field(20, ge=5, le=256)    # the null: the mask filled from predicted-class inputs
    min_z_flip: float = Field(5.0, gt=0)       # flip rate over the null, in its standard deviations
    min_z_pull: float = Field(2.0, gt=0)       # feature pull over the null, likewise
    departure: Literal["restore", "null", "free"] = "restore"  # what a trigger whose pattern
                                               # departs from the bug's pixels must also show
    key: bool = True                           # a mask that sends inputs to the predicted class
                                               # whatever other classes' content fills it passes
    source: bool = True                        # images: a trigger refused on other classes' inputs
                                               # is looked for again on the reported class's alone
    warp: bool = True                          # images: when the chosen trigger is refused, the fitted
                                               # warp is verified against warps fitted to other classes
    warp_controls: int = Field(5, ge=1, le=64)  # that null's size (each a warp fit: warp.py)


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


def correctly_classified(deployed: Deployed, task: Task, index: np.ndarray) -> np.ndarray:
    """The indices whose inputs the deployed model classifies correctly."""
    if len(index) == 0:
        return index
    return index[deployed.classify(task.name, task.train.x[index]) == task.train.y[index]]


def draw_controls(deployed: Deployed, task: Task, predicted: int, *, size: int, seed: int,
                  exclude_sha: str) -> np.ndarray:
    """Up to `size` train indices of clean inputs of `predicted` that the deployed model gets
    right (the report's own input left out): the fills of the null's controls."""
    candidates = np.flatnonzero(task.train.y == predicted)
    candidates = np.asarray([i for i in candidates
                             if sha256_bytes(task.train.x[i].tobytes()) != exclude_sha], dtype=int)
    correct = correctly_classified(deployed, task, candidates)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(correct, min(size, len(correct)), replace=False))


def draw_strangers(task: Task, predicted: int, *, size: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """Up to `size` train indices of classes other than `predicted`, none in `exclude` (the
    held-out sample): the key check's fills, content of any class but the bug's."""
    candidates = np.setdiff1d(np.flatnonzero(task.train.y != predicted), exclude)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(candidates, min(size, len(candidates)), replace=False))


def verify_trigger(deployed: Deployed, task: Task, bug: np.ndarray, predicted: int,
                   trigger: AnyTrigger, *, label: int, reference: np.ndarray | str,
                   exemplars: np.ndarray, sample: np.ndarray, params: VerifyParams,
                   strangers: np.ndarray | None = None, search: RunSearch | None = None) -> Verification:
    """Stamp the trigger and its controls on the sample's correctly classified inputs; accept
    on the z margin, or as a key, and check a departing pattern against the bug (module
    docstring).

    `sample` (train indices of other classes, from `draw_sample`) should be held out from the
    trigger's reversal; `exemplars` are the controls' fills (from `draw_controls`); `label` is
    the reported true label and `reference` a clean input of it (`pick_reference`);
    `strangers` (train indices, from `draw_strangers`) fill the key check (none: no key check);
    with the `search`, a text trigger's controls are the exemplars' strongest runs
    (phrase.strongest_runs), else their longest words.
    """
    index = correctly_classified(deployed, task, sample)
    if len(index) == 0:
        return Verification(False, {"verify_samples": 0},
                            [f"no correctly classified input of a class other than {predicted}"])
    if len(exemplars) == 0:
        return Verification(False, {"verify_samples": len(index), "controls": 0},
                            [f"no correctly classified clean input of class {predicted} for the controls"])
    trial = Trial(deployed, task, bug, predicted, trigger, task.train.x[index], exemplars,
                  task.train.y[index], search=search)
    numbers = {**trial.against_controls(keep_departure=params.departure == "null"),
               "mask_pixels": trigger.pixels, "rule": params.model_dump(exclude={"enabled"})}
    if trial.searched:  # what the null was made of, for the log
        named = [c for c in trial.controls[:5] if isinstance(c, TextTrigger)]
        numbers["control_words"] = [" ".join(c.words) for c in named]
    failures = z_failures(numbers, predicted, params, ceiling=isinstance(trigger, TextTrigger))
    if failures and params.key and strangers is not None and len(strangers) and is_place(trigger):
        numbers["key"], failures = key_check(trial, strangers, numbers, params, failures)
    if not failures and params.departure == "restore" and departs(trigger, trial.bug):
        numbers["departure"], failures = departure_check(trial, label, reference, params)
    return Verification(not failures, numbers, failures)
