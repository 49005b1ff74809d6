"""Pick among candidate triggers by how well each reproduces the bug's effect.

Every candidate (grow's square, a whole-image blend, the soft alpha-and-pattern trigger, the
soft one binarised) is stamped on clean inputs of other classes held out from fitting; its
effect is the deployed classifier's flip rate to the bug's predicted class (or, without a
classifier, the mean cosine of their features to the bug's). The score is that effect minus
`size_penalty` · (Σα / (H·W)), so a larger mask must buy a larger effect: a patch is best
told by a compact hard mask, a whole-image blend (which no square can express) by a small
alpha everywhere. The first candidate wins ties. Candidates are fitted in order and the
search stops at the first whose score reaches `enough` (the cheap square usually settles a
patch; the optimised ones run only when it falls short; a "blend" that is the bug pasted at
half strength scores too low to stop the search). Every fitted candidate's numbers
are recorded, and the ones never fitted are listed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.triggers import Trigger


class SelectParams(Params):
    """The `intake.reverse.select` section (method `auto`)."""

    candidates: list[str] = ["grow", "blend", "soft"]  # reversal methods that compete, in tie order
    binarise: bool = True           # also the soft trigger cut at `soft.threshold` (a hard mask)
    samples: int = Field(100, ge=1)  # clean inputs held out from fitting that candidates are scored on
    size_penalty: float = Field(0.5, ge=0)  # weight of the mask size Σα / (H·W)
    enough: float = Field(0.9, ge=0, le=1.01)  # stop fitting candidates once one's score reaches it
                                               # (above 1: fit them all)


def split_clean(clean: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs to fit candidates on, inputs held out to score them on); with too few inputs
    for both, all of them serve both."""
    order = np.random.default_rng(seed).permutation(len(clean))
    held, fit = np.sort(order[:samples]), np.sort(order[samples:])
    if len(fit) == 0:
        return clean, clean
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


def select_trigger(candidates: Iterable[tuple[str, Trigger]], effect: Callable[[Trigger], float], *,
                   size_penalty: float, enough: float = math.inf) -> tuple[str, Trigger, dict[str, Any]]:
    """(name, trigger) of the best-scoring candidate and every fitted candidate's numbers;
    `candidates` is consumed lazily, up to the first whose score reaches `enough`."""
    numbers: dict[str, Any] = {}
    fitted: dict[str, Trigger] = {}
    for name, trigger in candidates:
        value, size = effect(trigger), mask_size(trigger)
        fitted[name] = trigger
        numbers[name] = {"effect": round(value, 4), "size": round(size, 4), "pixels": trigger.pixels,
                         "soft": trigger.soft, "score": round(value - size_penalty * size, 4)}
        if numbers[name]["score"] >= enough:
            break
    chosen = max(fitted, key=lambda name: numbers[name]["score"])  # max keeps the first of ties
    return chosen, fitted[chosen], numbers
