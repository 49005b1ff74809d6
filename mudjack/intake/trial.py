"""One reversed trigger against its null: the trigger and its controls stamped on the same
clean inputs of other classes, measured on two levels and summarised as z-scores.

Controls: the SAME trigger model (the same alpha mask; for text, as many words at the same
position) filled from clean inputs of the predicted class instead of the bug. A text control is
each input's strongest run of that many words (phrase.strongest_runs), as the phrase search
reverses a report's: a forged sentence's trigger is its own strongest run. A trigger
reversed from a forged report (a clean input with a wrong label, a genuine error, a noise patch
or an unplanted pattern on an input of the predicted class) is made of such content, so it
pulls and flips no more than the controls do; a backdoor trigger is a pattern that does what no
class content under that mask does.

Two levels decide, measured for the trigger and for each control on the same held-out inputs:
- classifier: the flip rate, the share put in the predicted class;
- encoder: the feature pull, the rise of their mean cosine to the bug's features.

Each z-score's standard deviation has a floor, so a null that does not vary cannot inflate it:
for the flip rate, the binomial noise of a rate measured on the n inputs at chance
c = 1 / classes, sqrt(c(1 - c) / n); for the pull, the standard error of a mean cosine on the n
inputs (their cosines' spread / sqrt(n)). Both come from the task and the deployed model, not
from a tuned constant. The empirical p-values (rank of the trigger among the controls) are
recorded next to the z-scores, with the null's mean, std and quantiles.

A third level, the rise of the mean log-odds of the predicted class, is recorded with its z
(floor: the standard error of a mean log-odds on the n inputs). For text, a flip rate at its
ceiling (every input flipped) may clear the flip margin on it instead (`clears_at_ceiling`):
above a wide null (two classes, where a few content words flip many inputs) the rate has no
room to reach the margin, the log-odds show how far the trigger pushes. Not for images: forged
image reports reach a flip rate of 1 on resnet20 (a universal pattern of the deployed model;
bench/results/intake_forgery_restorenull_*), text forgeries 0.89 at most
(intake_forgery_search_minilm-sst2_s0.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.features import cosine, extract_features
from mudjack.heads import predict
from mudjack.intake.masks import masked_trigger
from mudjack.intake.phrase import RunSearch, strongest_runs
from mudjack.triggers import TextTrigger, Trigger, text_control_trigger

AnyTrigger = Trigger | TextTrigger


class Margins(Protocol):
    """The z margins a trigger must clear against its null (VerifyParams has them)."""

    min_z_flip: float
    min_z_pull: float


def departure(trigger: Trigger, bug: np.ndarray) -> np.ndarray:
    """What an image trigger's pattern adds to the bug's pixels (int16, signed)."""
    return trigger.pattern.astype(np.int16) - np.asarray(bug, dtype=np.int16)


def departs(trigger: AnyTrigger, bug: np.ndarray) -> bool:
    """Whether an image trigger's pattern differs from the bug's pixels where it touches them."""
    if isinstance(trigger, TextTrigger):
        return False
    return bool(departure(trigger, bug)[trigger.region].any())


def control_trigger(trigger: AnyTrigger, exemplar: np.ndarray, bug: np.ndarray | None = None) -> AnyTrigger:
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
    pattern = np.clip(np.asarray(exemplar, dtype=np.int16) + departure(trigger, bug), 0, 255)
    pattern = np.where(trigger.region[..., None], pattern, 0).astype(np.uint8)
    return Trigger(mask=trigger.mask, pattern=pattern)


@dataclass
class Trial:
    """One trigger and its controls, stamped on the same clean inputs of other classes."""

    deployed: Deployed
    task: Task
    raw_bug: np.ndarray
    predicted: int
    trigger: AnyTrigger
    clean: np.ndarray
    exemplars: np.ndarray
    labels: np.ndarray  # the clean inputs' classes
    search: RunSearch | None = None  # text: the controls are the exemplars' strongest runs

    @property
    def searched(self) -> bool:
        """Whether the controls are the exemplars' strongest runs (a text trigger with a search)."""
        return isinstance(self.trigger, TextTrigger) and self.search is not None

    def input_space(self, raw: np.ndarray) -> np.ndarray:
        """Images in the encoder's input space, where an image trigger lives (text as it is)."""
        if isinstance(self.trigger, TextTrigger):
            return raw
        return self.deployed.adapter.resize_raw(raw)

    @cached_property
    def bug(self) -> np.ndarray:
        return self.input_space(self.raw_bug)

    @cached_property
    def fills(self) -> np.ndarray:
        """The controls' exemplars."""
        return self.input_space(self.exemplars)

    @cached_property
    def controls(self) -> list[AnyTrigger]:
        """The trigger's mask filled from each exemplar (the plain null); for a searched text
        trigger, each exemplar's strongest run (phrase.strongest_runs)."""
        if self.searched:
            return strongest_runs(self.deployed.encoder, self.deployed.adapter, self.exemplars,
                                  self.trigger, self.search)
        return [control_trigger(self.trigger, e) for e in self.fills]

    def against_controls(self, *, keep_departure: bool) -> dict[str, Any]:
        """Sizes, z, p and the null's summary on each level (controls that keep the departure
        or not)."""
        departing = keep_departure and not isinstance(self.trigger, TextTrigger)
        controls = ([control_trigger(self.trigger, e, self.bug) for e in self.fills] if departing
                    else self.controls)
        effects = stamped_effects(self.deployed, self.task.name, self.raw_bug, self.predicted,
                                  self.clean, [self.trigger, *controls])
        n, chance = len(self.clean), 1 / len(self.task.classes)
        levels = {"flip_rate": (effects.flips, rate_noise(chance, n)),  # binomial noise at chance
                  # standard errors of a mean cosine and of a mean log-odds on the n inputs
                  "feature_shift": (effects.shifts, effects.cos_spread / float(np.sqrt(n))),
                  "log_odds": (effects.odds, effects.odds_spread / float(np.sqrt(n)))}
        # a sample of one class: intake's source pass (decision.py), on the reported label's inputs
        single = n > 0 and bool((self.labels == self.labels[0]).all())
        one_class = {"sample_class": int(self.labels[0])} if single else {}
        return {"verify_samples": n, **one_class, "controls": len(self.exemplars),
                "cos_before": effects.cos_before, "chance": round(chance, 4), **summarise(levels)}


@dataclass(frozen=True)
class Effects:
    """Per fill (the trigger first, then the controls) on the same clean inputs: the flip rate to
    the predicted class, the rise of their mean cosine to the bug's features and of their mean
    log-odds of the predicted class; the clean inputs' mean cosine to the bug and the spreads."""

    flips: np.ndarray
    shifts: np.ndarray
    odds: np.ndarray
    cos_before: float
    cos_spread: float
    odds_spread: float


def stamped_effects(deployed: Deployed, task: str, bug: np.ndarray, predicted: int, clean: np.ndarray,
                    fills: list[AnyTrigger]) -> Effects:
    adapter = deployed.adapter  # inputs at another size than the encoder's are resized to it first
    stamped = np.concatenate([adapter.stamp(clean, fill) for fill in fills])
    unstamped = adapter.resize_raw(np.concatenate([np.asarray(bug)[None], clean]))
    features = extract_features(deployed.encoder, adapter, np.concatenate([unstamped, stamped]))
    bug_features, before, after = features[:1], features[1:1 + len(clean)], features[1 + len(clean):]
    cos_before = cosine(before, bug_features)
    cos_after = cosine(after, bug_features).reshape(len(fills), len(clean))
    head = deployed.heads[task]
    with torch.no_grad():
        flipped = predict(head, after).reshape(len(fills), len(clean)) == predicted
        odds_before, odds_after = (log_odds(head(f), predicted) for f in (before, after))
    odds = odds_after.reshape(len(fills), len(clean)).mean(1) - odds_before.mean()
    return Effects(flips=flipped.mean(1), shifts=(cos_after.mean(1) - cos_before.mean()).numpy(),
                   odds=odds.numpy(), cos_before=round(float(cos_before.mean()), 4),
                   cos_spread=float(cos_before.std()), odds_spread=float(odds_before.std()))


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Per row, log p(target) - log(1 - p(target)), from the logits (exact where p rounds to 1)."""
    others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
    return logits[:, target] - torch.logsumexp(others, dim=1)


def rate_noise(chance: float, n: int) -> float:
    """The binomial noise of a rate measured on n inputs at `chance`: the floor of a rate's std."""
    return float(np.sqrt(chance * (1 - chance) / n))


def summarise(levels: dict[str, tuple[np.ndarray, float]]) -> dict[str, Any]:
    """Per level (its values, the trigger's first, and its std floor): the trigger's value, the
    null's summary, z and p."""
    numbers: dict[str, Any] = {}
    for name, (values, floor) in levels.items():
        value, null = float(values[0]), values[1:].astype(float)
        std = max(float(null.std()), floor)
        numbers[name] = round(value, 4)
        numbers[f"null_{name}"] = {
            "mean": round(float(null.mean()), 4), "std": round(float(null.std()), 4),
            "std_floor": round(floor, 4),
            **{f"q{q}": round(float(np.quantile(null, q / 100)), 4) for q in (10, 50, 90)},
            "max": round(float(null.max()), 4)}
        # no spread at all (one held-out input, or features that do not move): nothing to
        # measure an effect against, so no effect is shown
        numbers[f"z_{name}"] = round((value - float(null.mean())) / std, 2) if std > 0 else 0.0
        numbers[f"p_{name}"] = round((1 + int((null >= value).sum())) / (len(null) + 1), 4)
    return numbers


def clears_at_ceiling(numbers: dict[str, Any], need: float) -> bool:
    """Whether a flip rate at its ceiling (every input flipped, to within the binomial noise)
    clears the null by `need` on the classifier's log-odds instead: a rate of 1 has no room
    above a wide null (two classes, where a few content words flip many inputs), the log-odds
    of the predicted class still show how far the trigger pushes."""
    return at_ceiling(numbers) and numbers["z_log_odds"] >= need


def at_ceiling(numbers: dict[str, Any]) -> bool:
    """Whether the trigger flips every held-out input, to within the binomial noise."""
    return numbers["flip_rate"] >= 1 - numbers["null_flip_rate"]["std_floor"]


def z_failures(numbers: dict[str, Any], predicted: int, margins: Margins, *,
               ceiling: bool = False, null: str | None = None, pull: bool = True) -> list[str]:
    """The rule's failures: the trigger's z on the flip rate under `min_z_flip` (with `ceiling`,
    unless the rate clears the null at its ceiling), and with `pull` on the pull under
    `min_z_pull` (`numbers` from `Trial.against_controls`); `null` says what the controls were
    (default: the mask's fills)."""
    n, controls = numbers["verify_samples"], numbers["controls"]
    null = null or f"the same mask filled from {controls} clean class-{predicted} inputs"
    whose = f"class {numbers['sample_class']}" if "sample_class" in numbers else "other classes"
    levels = {"flip_rate": f"flips {numbers['flip_rate']:.3f} of them to class {predicted}"}
    if pull:
        shift = numbers["feature_shift"]
        levels["feature_shift"] = f"raises their mean cosine to the bug's features by {shift:.3f}"
    failures = []
    for name, effect in levels.items():
        z, spread = numbers[f"z_{name}"], numbers[f"null_{name}"]
        need = margins.min_z_flip if name == "flip_rate" else margins.min_z_pull
        saturated = ceiling and name == "flip_rate" and at_ceiling(numbers)
        if z < need and not (saturated and clears_at_ceiling(numbers, need)):
            failures.append(f"stamped on {n} clean inputs of {whose}, the reversed trigger {effect}: "
                            f"{z:.1f} std above {null} (mean {spread['mean']:.3f}, max {spread['max']:.3f}; "
                            f"need z >= {need}){_odds_note(numbers, predicted) if saturated else ''}")
    return failures


def _odds_note(numbers: dict[str, Any], predicted: int) -> str:
    """What a failure at the flip rate's ceiling adds: the log-odds level that could have cleared it."""
    null = numbers["null_log_odds"]
    return (f"; at its ceiling, it raises their mean log-odds of class {predicted} by "
            f"{numbers['log_odds']:.2f}: {numbers['z_log_odds']:.1f} std above the controls' "
            f"(mean {null['mean']:.2f}, max {null['max']:.2f})")
