"""A smooth blended trigger: one alpha over the whole image, the pattern a coarse grid of
colours interpolated bilinearly to the input size.

A blended pattern of low spatial frequency (a smooth colour field) leaves no fine residual in
the bug for residual.py to read, and the free-pattern blend (soft.py, `uniform`) fits whatever
pattern fires the backdoor, mostly an adversarial one made of fine detail (resnet20 -> GTSRB,
smooth blend seed 4: correlation 0.17 with the planted pattern). With only a grid of colours to
move, the fit cannot build such detail and lands nearer the planted field (8 cells a side:
seed 4 correlation 0.51, seed 1 0.40, where it is the first candidate the verification accepts).

    min_{α, g}  −mean cos(h(x ⊕ t), h(x_b)) − c·mean log p(ŷ_b | x ⊕ t) + λ·α,
    t = bilinear(g) (C, H, W),  x ⊕ t = x·(1−α) + t·α

The optimiser's settings are the soft trigger's (`intake.reverse.soft`: steps, lr, samples,
sparsity, classifier, init_alpha); the grid starts at the bug averaged onto it (the bug holds
the pattern at its alpha) and has `grid` cells a side (derived from the input side:
settings.py). There is no fidelity term: a smooth pattern under a bug's detail is not the
bug's pixels anywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.intake.soft import Score, SoftParams, alpha_logits, fit, fit_inputs
from mudjack.triggers import Trigger


class SmoothParams(Params):
    """The `intake.reverse.smooth` section."""

    # cells a side of the pattern's grid; 0: derived from the input side (settings.py: 8 from
    # 32 px up; on resnet20's smooth blend seed 1 it passed with a wider margin than 4, and 2
    # found nothing: docs/results.md)
    grid: int = Field(0, ge=0, le=256)  # at most the input's side is used


def grid_pattern(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, g, g) colours in [0, 1] as a (1, C, H, W) pattern, interpolated bilinearly."""
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=True)


def smooth_trigger(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, clean: np.ndarray,
                   *, grid: int, params: SoftParams, seed: int = 0, score: Score | None = None) -> Trigger:
    """The whole-image blend with a `grid` x `grid` pattern that makes clean inputs act like the bug."""
    clean_pixels, bug_pixels = fit_inputs(adapter, bug, clean, samples=params.samples, seed=seed)
    size = tuple(bug_pixels.shape[-2:])
    cells = F.adaptive_avg_pool2d(bug_pixels, grid).clone().requires_grad_(True)
    logit = alpha_logits(params, (1, 1))
    unanchored = params.model_copy(update={"fidelity": 0.0})  # the bug's pixels are no anchor here
    fit(encoder, clean_pixels, bug_pixels, logit, cells, params=unanchored, score=score,
        pattern_of=lambda free: grid_pattern(free, size))
    alpha = float(torch.sigmoid(logit).detach())
    with torch.no_grad():
        pattern = grid_pattern(cells, size)[0].permute(1, 2, 0).numpy()
    return Trigger(mask=np.full(size, alpha, dtype=np.float32),
                   pattern=np.rint(pattern * 255).astype(np.uint8))
