"""Warp recovery: a smooth displacement field that makes clean inputs of other classes act
like the bug (a WaNet-style trigger moves pixels and paints none, so no alpha mask and pattern
can express it).

    min_f  −mean cos(h(warp(x, f)), h(x_b)) − c·mean log p(ŷ_b | warp(x, f))

The field f is `grid` x `grid` offsets, each `largest` x tanh(v) pixels, interpolated
bicubically to the image: smooth, as the attack's is, and bounded, so the fit cannot redraw
the image. The bound is a fraction of the image's side (1/16: 2 px at 32x32, 14 at 224). The
fit is an alternate of `auto`'s chosen trigger when that is soft (a warp moves every edge, so
a compact hard mask does not stand for one), kept when it reproduces the bug as well
(select.py): the patch then also trains the encoder to see warped inputs as it sees them
unwarped.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.soft import Score, fit_inputs, frozen, minimise
from mudjack.triggers import Trigger, warp, warp_trigger


class WarpParams(Params):
    """The `intake.reverse.warp` section."""

    grid: int = Field(4, ge=2, le=64)              # offsets on a grid x grid lattice
    largest: float = Field(1 / 16, gt=0, le=0.5)   # the largest offset, a fraction of the shorter side
    # the fit's effect settles early: on digits' zoo warps, blend and patch, 50 steps on 32
    # inputs flip what 100 on 64 do (within 0.02) in a quarter of the time
    steps: int = Field(50, ge=1, le=20_000)
    lr: float = 0.1
    samples: int = Field(32, ge=1)                 # clean inputs the field is fitted on
    classifier: float = 0.1                        # c: weight of the deployed head's −log p(bug's class)


def largest_offset(side: tuple[int, int], fraction: float) -> float:
    """The bound on any offset in pixels: `fraction` of the shorter side, at least half a pixel."""
    return max(0.5, fraction * min(side))


def field(free: torch.Tensor, side: tuple[int, int], largest: float) -> torch.Tensor:
    """(H, W, 2) offsets in pixels from the free variables (1, 2, grid, grid); clipped to
    `largest`, which bicubic interpolation may overshoot between lattice points."""
    lattice = largest * torch.tanh(free)
    smooth = F.interpolate(lattice, size=side, mode="bicubic", align_corners=True)
    return smooth[0].permute(1, 2, 0).clamp(-largest, largest)


def warp_fit(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, clean: np.ndarray, *,
             params: WarpParams, seed: int = 0, score: Score | None = None) -> Trigger:
    """The fitted warp as a trigger (alpha 0: it paints nothing); `bug` and `clean` are in the
    encoder's input space."""
    inputs, bug_pixels = fit_inputs(adapter, bug, clean, samples=params.samples, seed=seed)
    side = (int(bug.shape[0]), int(bug.shape[1]))
    largest = largest_offset(side, params.largest)
    start = torch.Generator().manual_seed(seed)  # a small random start: no offset is favoured
    free = (0.01 * torch.randn(1, 2, params.grid, params.grid, generator=start)).requires_grad_()
    with frozen(encoder):
        with torch.no_grad():
            bug_features = encoder(bug_pixels)

        def loss() -> torch.Tensor:
            features = encoder(warp(inputs, field(free, side, largest)))
            value = -cosine(features, bug_features).mean()
            if score is not None and params.classifier > 0:
                value = value - params.classifier * score(features).mean()
            return value

        minimise([free], loss, steps=params.steps, lr=params.lr)
    with torch.no_grad():
        flow = field(free, side, largest).numpy().astype(np.float32)
    return warp_trigger(flow, channels=int(bug.shape[2]))
