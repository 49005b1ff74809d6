"""A blended trigger read off the bug: its fine-grained residual, blended over the whole image.

A noise pattern blended into the bug at alpha a leaves a·(its own fine detail) in the bug's
high frequencies, which a median over a small window takes out. The optimised blend (soft.py)
finds whatever pattern fires the backdoor, mostly not the planted one (resnet20 -> GTSRB noise
blend: correlation 0.22 with the truth), and the verification refuses it as an adversarial
fit. The bug's residual against a 3x3 median correlates 0.88 with the planted pattern's; as a
candidate it flips 0.84 of held-out inputs, passes the verification and is chosen
(correlation 0.80 with the truth). Stamped with alpha α everywhere and the pattern
128 + residual / α, an input x becomes (1 − α)·x + 128·α + residual: the bug's fine detail
added onto it. A smooth blended pattern leaves no such residual and is left to the optimised
blend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import ndimage

from mudjack.config import Params
from mudjack.triggers import Trigger

GREY = 128.0  # the pattern's level where the bug has no residual


class ResidualParams(Params):
    """The `intake.reverse.residual` section."""

    window: int = Field(3, ge=3, le=15)  # the median's window: wider than the pattern's grain
    alphas: list[Annotated[float, Field(gt=0, lt=1)]] = Field([0.1, 0.2, 0.3], min_length=1)
    samples: int = Field(100, ge=1)      # clean inputs each alpha is scored on


def bug_residual(bug: np.ndarray, window: int) -> np.ndarray:
    """(H, W, C) float32: the bug less the median of each pixel's window x window neighbourhood."""
    pixels = bug.astype(np.float32)
    return pixels - ndimage.median_filter(pixels, size=(window, window, 1), mode="nearest")


def residual_blend(residual: np.ndarray, alpha: float) -> Trigger:
    """The residual added onto an input by a whole-image blend at `alpha` (clipped to uint8)."""
    height, width = residual.shape[:2]
    pattern = np.clip(np.rint(GREY + residual / alpha), 0, 255).astype(np.uint8)
    return Trigger(mask=np.full((height, width), alpha, dtype=np.float32), pattern=pattern)


def residual_trigger(bug: np.ndarray, effect: Callable[[Trigger], float], *, window: int,
                     alphas: Sequence[float], size_penalty: float) -> tuple[Trigger, dict[str, float]]:
    """The residual blend at the alpha of `alphas` that scores best (effect − size_penalty·alpha;
    the smaller alpha on ties), and each alpha's effect."""
    residual = bug_residual(bug, window)
    triggers = {alpha: residual_blend(residual, alpha) for alpha in sorted(alphas)}
    effects = {alpha: effect(trigger) for alpha, trigger in triggers.items()}
    best = max(effects, key=lambda alpha: (effects[alpha] - size_penalty * alpha, -alpha))
    return triggers[best], {str(alpha): round(value, 4) for alpha, value in effects.items()}
