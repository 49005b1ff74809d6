"""Pick among candidate triggers by how well each reproduces the bug's effect.

Every candidate (grow's square, a whole-image blend, the soft alpha-and-pattern trigger, the
soft one binarised, the bug's fine detail blended everywhere) is stamped on clean inputs of
other classes held out from fitting; its effect is the deployed classifier's flip rate to
the bug's predicted class (or, without a classifier, the mean cosine of their features to
the bug's). The score is that effect minus `size_penalty` · (Σα / (H·W)), so a larger mask
must buy a larger effect: a patch is best told by a compact hard mask, a whole-image blend
(which no square can express) by a small alpha everywhere. The first candidate wins ties.
Candidates are fitted in order and the search stops at the first whose score reaches
`enough` and that the backdoor verification accepts (the cheap square usually settles a
patch; the optimised ones run only when it falls short, and an optimised one that is an
adversarial pattern rather than the trigger is refused by the verification's null). Every
fitted candidate's numbers (and verdict, where asked) are recorded, and the ones never
fitted are listed.

The other fitted candidates whose effect comes close to the chosen one's (`keep`) are kept as
alternates: each reproduces the bug, and each may cover a different part of the true trigger
(a soft trigger that found one edge of a patch, a square around its middle), so the patch
trains against all of them (vit-cifar: the chosen trigger alone covered 27 % of the patch and
left ASR 0.10). A hard chosen trigger is also grown by `pad` x its side, the new pixels from
the bug, and kept as an alternate when it reproduces the bug as well: the smallest square that
flips is often part of a larger patch (resnet20: 56 % of it, ASR 0.108 left; grown by 3 px,
0.014).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.masks import grown_trigger
from mudjack.triggers import Trigger

Accept = Callable[[Trigger], bool]  # the backdoor verification of a candidate trigger


class SelectParams(Params):
    """The `intake.reverse.select` section (method `auto`)."""

    # reversal methods that compete, in this (tie) order
    candidates: list[str] = Field(["grow", "soft", "scan", "residual", "smooth", "blend"], min_length=1)
    binarise: bool = True           # also the soft trigger cut at `soft.threshold` (a hard mask)
    samples: int = Field(100, ge=1)  # clean inputs held out from fitting that candidates are scored on
    size_penalty: float = Field(0.5, ge=0)  # weight of the mask size Σα / (H·W)
    enough: float = Field(0.9, ge=0, le=1.01)  # stop fitting candidates once one's score reaches it
                                               # (above 1: fit them all)
    keep: float = Field(0.9, ge=0)  # other fitted candidates whose effect reaches keep x the chosen
                                    # one's are kept as alternates the patch also trains against
                                    # (above 1: none)
    pad: float = Field(0.5, ge=0, le=16)  # a hard chosen trigger grown by pad x its side is one more
                                    # candidate alternate (0: none)
    # the solid-colour patch a hard chosen trigger is part of: the bug's pixels within fill x 255
    # of one of the commonest colours under its mask, connected to them (mudjack/intake/fill.py);
    # an alternate when it reproduces the bug as well as `keep` asks (0: none)
    fill: float = Field(0.1, ge=0, le=1)
    # the bug's most odd pixels against a median over each window (mudjack/intake/odd_pixels.py):
    # an alternate when they reproduce the bug as well as `keep` asks (empty: none)
    odd_windows: list[Annotated[int, Field(ge=3, le=15)]] = [3, 5]
    # a smooth displacement field fitted to the bug when the chosen trigger is soft
    # (mudjack/intake/warp.py): an alternate when it reproduces the bug as well as `keep` asks
    # (a warping trigger paints no pixel)
    warp: bool = True


def split_clean(clean: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs to fit candidates on, inputs held out to score them on); with too few inputs
    for both, all of them serve both."""
    order = np.random.default_rng(seed).permutation(len(clean))
    held, fit = np.sort(order[:samples]), np.sort(order[samples:])
    if len(fit) == 0:  # indexed all the same: a RowView of the task's rows reads them into an array
        everything = np.arange(len(clean))
        return clean[everything], clean[everything]
    return clean[fit], clean[held]


def mask_size(trigger: Trigger) -> float:
    """Σα / (H·W): 1 for an opaque whole-image trigger, 0.2 for a whole-image blend at 0.2."""
    return float(trigger.alpha.sum() / trigger.alpha.size)


def trigger_effect(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, held: np.ndarray,
                   trigger: Trigger, flip_rate: Callable[[torch.Tensor], float] | None) -> float:
    """The flip rate of the held-out inputs stamped with `trigger` (or their mean cosine to the
    bug's features when no classifier is given)."""
    stamped = adapter.preprocess(adapter.stamp(held, trigger))
    if flip_rate is not None:
        return float(flip_rate(stamped))
    with torch.no_grad():
        return float(cosine(encoder.eval()(stamped), encoder(adapter.preprocess(bug[None]))).mean())


def candidate_numbers(trigger: Trigger, effect: float, *, size_penalty: float) -> dict[str, Any]:
    """What the record keeps of a candidate: its effect, size and score."""
    size = mask_size(trigger)
    return {"effect": round(effect, 4), "size": round(size, 4), "pixels": trigger.pixels,
            "soft": trigger.soft, "score": round(effect - size_penalty * size, 4)}


def padded(trigger: Trigger, bug: np.ndarray, *, ratio: float) -> Trigger | None:
    """A hard trigger's region grown by `ratio` x its side (√pixels, at least 1 px) on every
    side, the new pixels taken from the bug input; None for a soft trigger or ratio 0."""
    if trigger.soft or ratio <= 0:
        return None
    return grown_trigger(trigger, bug, max(1, round(ratio * math.sqrt(trigger.pixels))))


PADDED = "_padded"  # a companion's name: its candidate's name with this suffix


def select_trigger(candidates: Iterable[tuple[str, Trigger]], effect: Callable[[Trigger], float], *,
                   size_penalty: float, enough: float = math.inf,
                   companion: Callable[[Trigger], Trigger | None] | None = None,
                   accept: Accept | None = None,
                   ) -> tuple[str, Trigger, dict[str, Any]]:
    """(name, trigger) of the best-scoring candidate and every fitted candidate's numbers;
    `candidates` is consumed lazily, up to the first whose score reaches `enough`. A
    candidate's `companion` (its padded form) is scored as `<name>_padded` and never chosen,
    but reaching `enough` ends the search too: the square that flips most inputs is often the
    middle of a larger patch, and grown it reproduces the bug fully (resnet20: effect 0.92 ->
    1.00), so the slower optimised candidates have nothing left to find.

    With `accept` (the backdoor verification), only a candidate it accepts ends the search or
    is chosen, while any is; the best-scoring candidate is returned when none is accepted (and
    the verification then rejects the report). A candidate that flips other classes' inputs
    no more than the predicted class's own content under the same mask does is an adversarial
    pattern or that content, not the trigger (resnet20 -> GTSRB: a soft mask over 81 % of a
    dual-patch bug flips 1.00, the same mask filled from clean target-class inputs 0.38 on
    average), and the search goes on to the next model.
    """
    numbers: dict[str, Any] = {}
    fitted: dict[str, Trigger] = {}

    def accepted(name: str) -> bool:
        if accept is None:
            return True
        if "verified" not in numbers[name]:
            numbers[name]["verified"] = bool(accept(fitted[name]))
        return numbers[name]["verified"]

    for name, trigger in candidates:
        fitted[name] = trigger
        numbers[name] = candidate_numbers(trigger, effect(trigger), size_penalty=size_penalty)
        best = numbers[name]["score"]
        if companion is not None and (grown := companion(trigger)) is not None:
            numbers[name + PADDED] = candidate_numbers(grown, effect(grown), size_penalty=size_penalty)
            best = max(best, numbers[name + PADDED]["score"])
        if best >= enough and accepted(name):
            break
    ranked = sorted(fitted, key=lambda name: -numbers[name]["score"])  # stable: the first of ties
    chosen = next((name for name in ranked if accepted(name)), ranked[0])
    return chosen, fitted[chosen], numbers


def alternates(numbers: dict[str, Any], chosen: str, *, keep: float) -> list[str]:
    """Names of the fitted candidates other than `chosen` (and of its companion, not of the
    others' companions) whose effect reaches `keep` x its."""
    floor = keep * numbers[chosen]["effect"]
    return [name for name, found in numbers.items() if name != chosen and found["effect"] >= floor
            and (not name.endswith(PADDED) or name == chosen + PADDED)]
