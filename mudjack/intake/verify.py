"""Backdoor verification: does a report's reversed trigger behave like a backdoor trigger?

A misclassification is not yet a backdoor bug: the report may be an ordinary error, an input
with a wrong claimed label, noise or a pasted pattern. A backdoor trigger transfers: stamped
on clean inputs of OTHER classes that the deployed model gets right (`samples` of them, held
out from the trigger's reversal), it moves them to the bug's predicted class. How far is
"enough" differs by encoder and attack strength (a weak backdoor flips 30 %, resnet20's
features of all classes sit at cosine 0.8-0.9 of each other), so the rule calibrates itself
on the deployed model with a null distribution instead of absolute thresholds.

Controls (the null): the SAME trigger model (the same alpha mask; for text, as many words
at the same position) filled from `controls` clean inputs of the predicted class instead of
the bug. A trigger reversed from a forged report (a clean input with a wrong label, a
genuine error, a noise patch or an unplanted pattern on an input of the predicted class) is
made of such content, so it pulls and flips no more than the controls do; a backdoor
trigger is a pattern that does what no class content under that mask does.

An optimised pattern may also add to the bug's pixels (its departure from them), and a free
pattern alone is an adversarial perturbation on a weak encoder: resnet20 -> GTSRB, a
whole-image blend fitted to a forged report flips 0.9 of other classes' inputs to any class
(z 6-60 against these controls; 20 of 20 forged reports were accepted). A genuine blend's
fitted pattern departs from the bug too (toward the trigger, which the bug carries only at
its alpha), so a departure alone condemns nothing. `departure` says what such a trigger must
show in addition:
- `restore` (the default): taken off the bug (`unstamp`: the blend undone where alpha < 1/2,
  the reference's pixels where the trigger covers the input), it gives back the label the
  client reported, as a backdoor bug's trigger does; or, on at most half of the image, its
  flips survive controls that keep the departure (so the bug's own content under the mask is
  what flips). A forged report's pattern is neither (resnet20 -> GTSRB: it leaves the
  predicted or a third class). Over more of the image the second does not hold: the pattern
  was fitted together with the bug's pixels under it, so swapping them is what the controls
  lose (resnet20 -> MNIST: forged reports' 888-1024-pixel fits scored z 5.9-32 against them);
  and there giving the label back must be the trigger's doing: fewer than half of its controls
  (the same alpha filled from clean predicted-class inputs), taken off the bug the same way,
  may give it back too. An ordinary error sits next to its true class, so leaning it away from
  the predicted class by any such blend restores it (resnet20 -> MNIST: genuine errors reported
  with their true labels, whole-image fits that transfer to a never-attacked model as well);
  a bug under a blended trigger keeps firing until the trigger itself is taken off (a weak
  one may not: digits, the 3-epoch blend of ASR 0.24, whose bugs 0.8-1.0 of the controls restore);
- `null`: the second alone (it also refuses genuine blends: digits, 5 of 6 blend reports);
- `free`: nothing (the plain null decides).

Some backdoors fire on their mask's place whatever fills it (resnet20 -> GTSRB, a scatter of
single pixels: eight of its pixels filled from clean class-12 inputs flip 0.46 of inputs to 12,
from other classes' inputs 0.39, from noise 0.63, the trigger itself 0.91), so the controls
fire the backdoor too and no trigger stands out from them (z 2.5). Such a mask is a key to the
predicted class, which class content is not: filled from `controls` clean inputs of OTHER
classes (`key`), it sends the inputs to the predicted class far more than to any other class
(z over the highest of the other classes' rates, each counting neither the inputs of that
class nor the fills taken from it, in their standard deviations) and than to the fills' own
classes (`carried`: a mask large enough to carry its fill's class is a window onto content;
on digits, 39 of 64 pixels of any digit pasted on another make an 8 of it). A trigger the
plain null refuses is accepted when its mask is such a key, it flips more than every one of
its controls (the empirical p-value at its floor, 1 / (controls + 1)) and at least as much as
the key's fills, and its alpha sums to at most half of the image (a key is a place; over
more, the fills replace the input). A forged report's trigger is the predicted class's
content (or a pattern's), which the fills replace, so they go nowhere in particular; and where
its mask does fall on a key, it is content like its controls, so it tops them all only one
time in controls + 1.

Two levels are measured, for the trigger and for each control, on the same held-out inputs:
- classifier: the flip rate, the share put in the predicted class;
- encoder: the feature pull, the rise of their mean cosine to the bug's features.

The trigger is accepted when its z-score against the controls (their mean and standard
deviation) is at least `min_z_flip` on the flip rate and at least `min_z_pull` on the pull.
The flip rate decides (a backdoor bug is a wrong prediction); the pull confirms that the
effect goes through the encoder, the part that is patched, and not through a quirk of the
head. Its bar is lower because a reversed mask padded around the trigger, filled with the
predicted class's content, pulls features toward the bug's class too: a real weak backdoor's
16-pixel mask scores z 2.5-4 on the pull while its flip rate scores 6-17. The
standard deviation has a floor, so a null that does not vary cannot inflate z: for the flip
rate, the binomial noise of a rate measured on the n inputs at chance c = 1 / classes,
sqrt(c(1 - c) / n); for the pull, the standard error of a mean cosine on the n inputs (their
cosines' spread / sqrt(n)). Both come from the task and the deployed model, not from a tuned
constant. The flip-rate floor is also the sanity floor: with a null that flips nothing the
trigger must flip min_z_flip * sqrt(c(1 - c) / n) of the inputs (0.15 on 10 classes, 0.25 on 2
with n = 100); a floor of "more than chance" would refuse a binary task's backdoor of ASR 0.4.
The empirical p-values (rank of the trigger among the controls) are recorded next to the
z-scores, with the null's mean, std and quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Params
from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.features import cosine, extract_features
from mudjack.heads import predict
from mudjack.intake.masks import masked_trigger
from mudjack.io import sha256_bytes
from mudjack.triggers import TextTrigger, Trigger, text_control_trigger, unstamp


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


def draw_controls(deployed: Deployed, task: Task, predicted: int, *, size: int, seed: int,
                  exclude_sha: str) -> np.ndarray:
    """Up to `size` train indices of clean inputs of `predicted` that the deployed model gets
    right (the report's own input left out): the fills of the null's controls."""
    candidates = np.flatnonzero(task.train.y == predicted)
    candidates = np.asarray([i for i in candidates
                             if sha256_bytes(task.train.x[i].tobytes()) != exclude_sha], dtype=int)
    correct = _correct(deployed, task, candidates)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(correct, min(size, len(correct)), replace=False))


def draw_strangers(task: Task, predicted: int, *, size: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """Up to `size` train indices of classes other than `predicted`, none in `exclude` (the
    held-out sample): the key check's fills, content of any class but the bug's."""
    candidates = np.setdiff1d(np.flatnonzero(task.train.y != predicted), exclude)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(candidates, min(size, len(candidates)), replace=False))


def control_trigger(trigger: Trigger | TextTrigger, exemplar: np.ndarray,
                    bug: np.ndarray | None = None) -> Trigger | TextTrigger:
    """The reversed trigger model filled with a clean input's content instead of the bug's.

    With the `bug`, an image trigger's departure from the bug's pixels (what an optimised
    pattern adds to them) is kept on the exemplar's: only the bug's content is swapped out, so
    a pattern that flips by what it added (an adversarial perturbation, which a free
    whole-image blend is on a weak encoder) flips its controls as well; a hard trigger cut from
    the bug has no departure and is filled with the exemplar's pixels alone."""
    if isinstance(trigger, TextTrigger):
        return text_control_trigger(trigger, exemplar)
    if bug is None:
        return masked_trigger(trigger.mask, exemplar)
    pattern = np.clip(np.asarray(exemplar, dtype=np.int16) + _departure(trigger, bug), 0, 255)
    pattern = np.where(trigger.region[..., None], pattern, 0).astype(np.uint8)
    return Trigger(mask=trigger.mask, pattern=pattern)


def verify_trigger(deployed: Deployed, task: Task, bug: np.ndarray, predicted: int,
                   trigger: Trigger | TextTrigger, *, label: int, reference: np.ndarray | str,
                   exemplars: np.ndarray, sample: np.ndarray, params: VerifyParams,
                   strangers: np.ndarray | None = None) -> Verification:
    """Stamp the trigger and its controls on the sample's correctly classified inputs; accept
    on the z margin, or as a key, and check a departing pattern against the bug (module
    docstring).

    `sample` (train indices of other classes, from `draw_sample`) should be held out from the
    trigger's reversal; `exemplars` are the controls' fills (from `draw_controls`); `label` is
    the reported true label and `reference` a clean input of it (`pick_reference`);
    `strangers` (train indices, from `draw_strangers`) fill the key check (none: no key check).
    """
    index = _correct(deployed, task, sample)
    if len(index) == 0:
        return Verification(False, {"verify_samples": 0},
                            [f"no correctly classified input of a class other than {predicted}"])
    if len(exemplars) == 0:
        return Verification(False, {"verify_samples": len(index), "controls": 0},
                            [f"no correctly classified clean input of class {predicted} for the controls"])
    trial = _Trial(deployed, task, bug, predicted, trigger, task.train.x[index], exemplars,
                   task.train.y[index])
    numbers = {**trial.against_controls(keep_departure=params.departure == "null"),
               "mask_pixels": trigger.pixels, "rule": params.model_dump(exclude={"enabled"})}
    failures = _failures(numbers, predicted, params)
    if failures and params.key and strangers is not None and len(strangers) and _place(trigger):
        numbers["key"], failures = _key_check(trial, strangers, numbers, params, failures)
    if not failures and params.departure == "restore" and departs(trigger, trial.bug):
        numbers["departure"], failures = _departure_check(trial, label, reference, params)
    return Verification(not failures, numbers, failures)


def _place(trigger: Trigger | TextTrigger) -> bool:
    """Whether an image trigger could be a key: a place that leaves most of the image (alpha
    summed over at most half of it) to the input; pasted over more, the fills replace the
    input (digits: forged reports' masks over 35-64 of 64 pixels made an 8 of any input)."""
    return isinstance(trigger, Trigger) and float(trigger.alpha.mean()) <= 0.5


def _spread(trigger: Trigger) -> bool:
    """Whether a trigger touches more than half of the image. Its fitted pattern is then an
    image-wide perturbation fitted together with the bug's pixels under it, which controls
    that keep the departure but swap those pixels undo: the fit, not the bug's content, makes
    it beat them (resnet20 -> MNIST, forged reports' 888-1024-pixel fits scored z 5.9-32 against
    such controls and the never-attacked model follows most of them), so only the restore
    rule can pass it."""
    return float(trigger.region.mean()) > 0.5


def _departure(trigger: Trigger, bug: np.ndarray) -> np.ndarray:
    """What an image trigger's pattern adds to the bug's pixels (int16, signed)."""
    return trigger.pattern.astype(np.int16) - np.asarray(bug, dtype=np.int16)


def departs(trigger: Trigger | TextTrigger, bug: np.ndarray) -> bool:
    """Whether an image trigger's pattern differs from the bug's pixels where it touches them."""
    if isinstance(trigger, TextTrigger):
        return False
    return bool(_departure(trigger, bug)[trigger.region].any())


@dataclass
class _Trial:
    """One trigger and its controls, stamped on the same clean inputs of other classes."""

    deployed: Deployed
    task: Task
    raw_bug: np.ndarray
    predicted: int
    trigger: Trigger | TextTrigger
    clean: np.ndarray
    exemplars: np.ndarray
    labels: np.ndarray  # the clean inputs' classes

    def _input_space(self, raw: np.ndarray) -> np.ndarray:
        """Images in the encoder's input space, where an image trigger lives (text as it is)."""
        if isinstance(self.trigger, TextTrigger):
            return raw
        return self.deployed.adapter.resize_raw(raw)

    @cached_property
    def bug(self) -> np.ndarray:
        return self._input_space(self.raw_bug)

    @cached_property
    def fills(self) -> np.ndarray:
        """The controls' exemplars."""
        return self._input_space(self.exemplars)

    @cached_property
    def controls(self) -> list[Trigger | TextTrigger]:
        """The trigger's mask filled from each exemplar (the plain null)."""
        return [control_trigger(self.trigger, e) for e in self.fills]

    def against_controls(self, *, keep_departure: bool) -> dict[str, Any]:
        """Sizes, z, p and the null's summary on both levels (controls that keep the departure
        or not)."""
        controls = ([control_trigger(self.trigger, e, self.bug) for e in self.fills] if keep_departure
                    else self.controls)
        fills = [self.trigger, *controls]
        flips, shifts, cos_before = _effects(self.deployed, self.task.name, self.raw_bug, self.predicted,
                                             self.clean, fills)
        return {"verify_samples": len(self.clean), "controls": len(self.exemplars),
                "cos_before": round(float(cos_before.mean()), 4),
                **_statistics(flips, shifts, n=len(self.clean), chance=1 / len(self.task.classes),
                              spread=float(cos_before.std()))}

    def key_rates(self, strangers: np.ndarray) -> tuple[np.ndarray, float]:
        """Filled from each stranger, the trigger's mask sends the clean inputs: (per class, the
        share sent there, counting neither that class's inputs nor its strangers; the share
        sent to the stranger's own class, the content it carries)."""
        fills = self._input_space(self.task.train.x[strangers])
        triggers = [control_trigger(self.trigger, fill) for fill in fills]
        stamped = np.concatenate([self.deployed.adapter.stamp(self.clean, t) for t in triggers])
        moved = self.deployed.classify(self.task.name, stamped).reshape(len(triggers), len(self.clean))
        sources = self.task.train.y[strangers][:, None]
        rates = np.zeros(len(self.task.classes))
        for k in range(len(rates)):
            counted = (self.labels[None, :] != k) & (sources != k)
            rates[k] = ((moved == k) & counted).sum() / max(int(counted.sum()), 1)
        foreign = self.labels[None, :] != sources
        return rates, float(((moved == sources) & foreign).sum() / max(int(foreign.sum()), 1))


def _key_check(trial: _Trial, strangers: np.ndarray, numbers: dict[str, Any], params: VerifyParams,
               failures: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(numbers, failures): whether the trigger's mask is a key to the predicted class (module
    docstring); the plain null's failures stand, with the key's, when it is not."""
    rates, carried = trial.key_rates(strangers)
    rate, others = float(rates[trial.predicted]), np.delete(rates, trial.predicted)
    floor = _rate_noise(numbers["chance"], numbers["verify_samples"])
    # it must beat every other class (resnet20: a 43-pixel mask of a forged report sent 0.22 of
    # inputs to the target, 0.19 to another class) and the content its fills carry (a mask large
    # enough to carry its fill's class is a window onto content, not a key: on digits, 39 of 64
    # pixels of any digit pasted on another make an 8 of it)
    z = (rate - max(float(others.max()), carried)) / max(float(others.std()), floor)
    key = {"fills": len(strangers), "rate": round(rate, 4), "others_mean": round(float(others.mean()), 4),
           "others_std": round(float(others.std()), 4), "others_max": round(float(others.max()), 4),
           "std_floor": round(floor, 4), "carried": round(carried, 4), "z": round(z, 2)}
    # the trigger itself must flip more than every control (its empirical p-value at the floor,
    # 1 / (controls + 1)): a forged report's "trigger" on a keyed model is class content in the
    # key's place, as its controls are, so it tops them all only one time in controls + 1
    # (resnet20 -> GTSRB: a wrong-label class-12 input's 72-pixel mask flipped 0.55, its controls
    # up to 0.56; the zoo's keyed triggers flipped 0.92-1.00 over controls at most 0.77-0.93)
    stronger = numbers["flip_rate"] >= rate and numbers["flip_rate"] > numbers["null_flip_rate"]["max"]
    if z >= params.min_z_flip and stronger:
        return key, []
    verdict = ("flips" if stronger else "does not flip") + " more than every control and the fills"
    return key, [*failures, f"filled from {len(strangers)} clean inputs of other classes, the trigger's mask "
                            f"sends {rate:.3f} of the inputs to class {trial.predicted} (another class at "
                            f"most {float(others.max()):.3f}, the fills' own {carried:.3f}): z {z:.1f} (need "
                            f"{params.min_z_flip}), and the trigger {verdict}: not a key"]


def _departure_check(trial: _Trial, label: int, reference: np.ndarray | str,
                     params: VerifyParams) -> tuple[dict[str, Any], list[str]]:
    """(numbers, failures): a departing trigger restores the reported label when taken off the
    bug, or its flips survive controls that keep its departure; over more than half of the
    image only the first counts, and then fewer than half of its controls may restore it too."""
    adapter, trigger = trial.deployed.adapter, trial.trigger
    assert isinstance(trigger, Trigger)  # text triggers never depart
    fill = adapter.resize_raw(np.asarray(reference))  # where the trigger covers the bug
    taken_off = unstamp(trial.bug, trigger, fill)
    restored = int(trial.deployed.classify(trial.task.name, taken_off[None])[0])
    numbers: dict[str, Any] = {"restored_class": restored, "restores": restored == label}
    if restored == label:
        return numbers, _restores_alone(trial, label, fill, numbers)
    if _spread(trigger):
        return numbers, [f"the trigger's pattern departs from the bug's pixels over "
                         f"{float(trigger.region.mean()):.0%} of the image and, taken off the bug, "
                         f"leaves class {restored}, not the reported {label}"]
    kept = trial.against_controls(keep_departure=True)
    numbers["kept_null"] = {k: kept[k] for k in ("z_flip_rate", "z_feature_shift", "p_flip_rate")}
    numbers["kept_null"]["null_flip_mean"] = kept["null_flip_rate"]["mean"]
    if not _failures(kept, trial.predicted, params):
        return numbers, []
    return numbers, [f"the trigger's pattern departs from the bug's pixels and its flips rest on that: "
                     f"taken off the bug it leaves class {restored}, not the reported {label}, and "
                     f"against controls that keep the departure it scores z "
                     f"{kept['z_flip_rate']:.1f} on the flip rate (need {params.min_z_flip})"]


def _restores_alone(trial: _Trial, label: int, fill: np.ndarray, numbers: dict[str, Any]) -> list[str]:
    """Failures (none or one) of a trigger that gives back the reported label: over more than
    half of the image, at least half of its controls must not (recorded in `numbers`); `fill`
    is the reference in the encoder's input space, as `unstamp` takes it."""
    if not _spread(trial.trigger):
        return []
    numbers["controls_restoring"] = share = _controls_restoring(trial, label, fill)
    if share < 0.5:
        return []
    return [f"taken off the bug, the trigger's pattern over {float(trial.trigger.region.mean()):.0%} of the "
            f"image gives back the reported label {label}, but so do {share:.0%} of its controls (the same "
            f"alpha filled from clean class-{trial.predicted} inputs): the bug is next to class {label} "
            f"whatever is taken off it"]


def _controls_restoring(trial: _Trial, label: int, fill: np.ndarray) -> float:
    """The share of the trigger's controls (its alpha filled from the controls' clean inputs of
    the predicted class) that, taken off the bug as the trigger is, give back `label`."""
    taken_off = np.stack([unstamp(trial.bug, control, fill) for control in trial.controls
                          if isinstance(control, Trigger)])
    return round(float((trial.deployed.classify(trial.task.name, taken_off) == label).mean()), 4)


def _effects(deployed: Deployed, task: str, bug: np.ndarray, predicted: int, clean: np.ndarray,
             fills: list[Trigger | TextTrigger]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Per fill (the trigger first, then the controls): the flip rate to `predicted` and the
    rise of the mean cosine to the bug's features; and the clean inputs' cosines to the bug."""
    adapter = deployed.adapter  # inputs at another size than the encoder's are resized to it first
    stamped = np.concatenate([adapter.stamp(clean, fill) for fill in fills])
    unstamped = adapter.resize_raw(np.concatenate([np.asarray(bug)[None], clean]))
    features = extract_features(deployed.encoder, adapter, np.concatenate([unstamped, stamped]))
    bug_features, before, after = features[:1], features[1:1 + len(clean)], features[1 + len(clean):]
    cos_before = cosine(before, bug_features)
    cos_after = cosine(after, bug_features).reshape(len(fills), len(clean))
    with torch.no_grad():
        flipped = predict(deployed.heads[task], after).reshape(len(fills), len(clean)) == predicted
    shifts = (cos_after.mean(1) - cos_before.mean()).numpy()
    return flipped.mean(1), shifts, cos_before


def _rate_noise(chance: float, n: int) -> float:
    """The binomial noise of a rate measured on n inputs at `chance`: the floor of a rate's std."""
    return float(np.sqrt(chance * (1 - chance) / n))


def _statistics(flips: np.ndarray, shifts: np.ndarray, *, n: int, chance: float,
                spread: float) -> dict[str, Any]:
    """The trigger's values (index 0), the null's summary, the floors, z and p on both levels."""
    floors = {"flip_rate": _rate_noise(chance, n),                     # binomial noise at chance
              "feature_shift": spread / float(np.sqrt(n))}            # standard error of a mean cosine
    numbers: dict[str, Any] = {"chance": round(chance, 4)}
    for name, values in (("flip_rate", flips), ("feature_shift", shifts)):
        value, null = float(values[0]), values[1:].astype(float)
        std = max(float(null.std()), floors[name])
        numbers[name] = round(value, 4)
        numbers[f"null_{name}"] = {
            "mean": round(float(null.mean()), 4), "std": round(float(null.std()), 4),
            "std_floor": round(floors[name], 4),
            **{f"q{q}": round(float(np.quantile(null, q / 100)), 4) for q in (10, 50, 90)},
            "max": round(float(null.max()), 4)}
        numbers[f"z_{name}"] = round((value - float(null.mean())) / std, 2)
        numbers[f"p_{name}"] = round((1 + int((null >= value).sum())) / (len(null) + 1), 4)
    return numbers


def _failures(numbers: dict[str, Any], predicted: int, params: VerifyParams) -> list[str]:
    n, controls = numbers["verify_samples"], numbers["controls"]
    shift = numbers["feature_shift"]
    levels = {"flip_rate": f"flips {numbers['flip_rate']:.3f} of them to class {predicted}",
              "feature_shift": f"raises their mean cosine to the bug's features by {shift:.3f}"}
    failures = []
    for name, effect in levels.items():
        z, null = numbers[f"z_{name}"], numbers[f"null_{name}"]
        need = params.min_z_flip if name == "flip_rate" else params.min_z_pull
        if z < need:
            failures.append(f"stamped on {n} clean inputs of other classes, the reversed trigger {effect}: "
                            f"{z:.1f} std above the same mask filled from {controls} clean "
                            f"class-{predicted} inputs (mean {null['mean']:.3f}, max {null['max']:.3f}; "
                            f"need z >= {need})")
    return failures
