"""Trigger recovery by ranked growth: the smallest top-k of the occlusion map that acts
like the whole bug input.

Occlusion ranks the bug's pixels by how much hiding them moves the bug's features
toward the reference; 2-means on that map over-covers on real encoders. Here the
mask grows along the ranking (k on a geometric grid) and stops at the first k whose
pixels, pasted on clean inputs, act like `fraction` of the largest mask tried. "Act"
is the deployed classifier's flip rate to the bug's class when intake passes it (the
features of a weak encoder are all close, so cosine saturates: on resnet20-gtsrb it
picked 11 pixels), else the cosine pull toward the bug's features. Forward passes only.

With `scan` sides, the ranking the squares grow on is a flip-rate scan instead: squares of
the bug's pixels pasted at every position on a few clean inputs, each pixel scored by the
flip rate of the squares covering it. It costs ~one forward pass per position and side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Fraction, Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.masks import best_squares, dilate, largest_component, masked_trigger, square_corners
from mudjack.intake.settings import scan_sides, scan_stride
from mudjack.triggers import Trigger, blend


class GrowParams(Params):
    shape: Literal["square", "pixels"] = "square"  # grow a best-scoring square, or top-k pixels
    samples: int = Field(64, ge=1)              # clean inputs the candidate masks are pasted on
    min_pixels: int = Field(4, ge=1)
    max_fraction: float = Field(0.35, gt=0, le=1)  # largest mask tried, as a fraction of the image
    growth: float = Field(1.25, gt=1, le=16)    # ratio between consecutive mask sizes (> 1, or no end)
    fraction: Fraction = 0.9                    # share of the largest mask's pull a mask must reach
    # Pixels added around the chosen mask. The smallest mask that flips is often only part of
    # the trigger (a partial patch already fires the backdoor); patching then leaves the rest
    # working. On resnet20 the chosen 8x8 square sat 3 rows off the 10x10 patch.
    pad: int = Field(0, ge=0, le=1024)  # at most the input's side is used
    # Squares tried per side: the best-scoring one, then the next best that do not overlap it.
    # The occlusion map's top square sometimes sits on the object, not the trigger.
    windows: int = Field(1, ge=1)
    # Square sides of a flip-rate scan that replaces the occlusion map as the ranking (needs
    # the deployed classifier's flip rate; empty: occlusion). Each pixel scores the mean flip
    # rate of the scanned squares covering it, summed over sides. On resnet20-gtsrb occlusion
    # sometimes peaks on the sign, not the trigger; the scan asks the classifier directly.
    # "auto": sides derived from the input size (mudjack/intake/settings.py).
    scan: list[Annotated[int, Field(ge=1)]] | Literal["auto"] = []
    scan_stride: int = Field(0, ge=0)  # 0: derived from the input size
    scan_samples: int = Field(16, ge=1)  # clean inputs each scanned square is pasted on


def mask_sizes(total: int, params: GrowParams) -> list[int]:
    sizes, size = [], float(params.min_pixels)
    while size < params.max_fraction * total:
        sizes.append(int(round(size)))
        size *= params.growth
    return sorted(set(sizes)) + [int(params.max_fraction * total)]


def candidate_masks(scores: np.ndarray, params: GrowParams) -> list[np.ndarray]:
    """Growing candidates: best squares of every side, or top-k pixels on a geometric grid."""
    if params.shape == "square":
        largest = int(np.sqrt(params.max_fraction * scores.size))
        smallest = max(1, min(int(np.sqrt(params.min_pixels)), largest))  # one square at least
        return [mask for side in range(smallest, largest + 1)
                for mask in best_squares(scores, side, params.windows)]
    order = np.argsort(scores, axis=None)[::-1]
    masks = []
    for k in mask_sizes(scores.size, params):
        mask = np.zeros(scores.size, dtype=bool)
        mask[order[:k]] = True
        masks.append(mask.reshape(scores.shape))
    return masks


def paste(clean: torch.Tensor, bug: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """Clean [0, 1] pixels with the bug's pixels under `mask` pasted in."""
    return blend(clean, bug, torch.from_numpy(mask.astype(np.float32))[None, None])


@torch.no_grad()
def pull(encoder: ImageEncoder, clean: torch.Tensor, bug: torch.Tensor, mask: np.ndarray,
         bug_features: torch.Tensor) -> float:
    """Mean cosine of clean inputs with the masked bug pixels pasted in, to the bug's features."""
    return float(cosine(encoder(paste(clean, bug, mask)), bug_features).mean())


def scan_map(flip_rate: Callable[[torch.Tensor], float], clean: torch.Tensor, bug: torch.Tensor,
             sides: list[int], *, stride: int) -> np.ndarray:
    """Per-pixel scores: for each side, the mean flip rate of the scanned squares covering the
    pixel (the bug's pixels under the square pasted on `clean`); summed over sides."""
    shape = tuple(bug.shape[-2:])
    scores = np.zeros(shape)
    for side in (s for s in sides if 0 < s <= min(shape)):
        total, count = np.zeros(shape), np.zeros(shape)
        for row, col in square_corners(shape, side, stride):
            mask = np.zeros(shape, dtype=bool)
            mask[row:row + side, col:col + side] = True
            total[mask] += flip_rate(paste(clean, bug, mask))
            count[mask] += 1
        scores += total / np.maximum(count, 1)
    return scores


def ranking(scores: np.ndarray, clean: torch.Tensor, bug: torch.Tensor, *, params: GrowParams,
            flip_rate: Callable[[torch.Tensor], float] | None) -> np.ndarray:
    """The map candidates grow on: the flip-rate scan when asked for (occlusion breaking its
    ties), else the occlusion scores."""
    if not params.scan or flip_rate is None:
        return scores
    side = min(scores.shape)  # auto values, when not resolved by reverse_engineer already
    sides = scan_sides(side) if params.scan == "auto" else params.scan
    scale = float(np.abs(scores).max()) or 1.0
    return scan_map(flip_rate, clean[:params.scan_samples], bug, sides,
                    stride=params.scan_stride or scan_stride(side)) + 1e-3 * scores / scale


def grow_trigger(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, scores: np.ndarray,
                 clean: np.ndarray, *, params: GrowParams, seed: int = 0,
                 flip_rate: Callable[[torch.Tensor], float] | None = None) -> Trigger:
    """The smallest candidate mask that acts like the largest one; pattern = the bug's pixels."""
    pick = np.random.default_rng(seed).permutation(len(clean))[:params.samples]
    clean_pixels = adapter.preprocess(clean[np.sort(pick)])
    bug_pixels = adapter.preprocess(bug[None])
    encoder = encoder.eval()
    with torch.no_grad():
        bug_features = encoder(bug_pixels)

    def effect(mask: np.ndarray) -> float:
        if flip_rate is None:
            return pull(encoder, clean_pixels, bug_pixels, mask, bug_features)
        return flip_rate(paste(clean_pixels, bug_pixels, mask))

    masks = candidate_masks(ranking(scores, clean_pixels, bug_pixels, params=params, flip_rate=flip_rate),
                            params)
    pulls = [effect(mask) for mask in masks]
    baseline = effect(np.zeros(scores.shape, bool))
    goal = baseline + params.fraction * (max(pulls) - baseline)
    # The first size reaching the goal; when none does (no mask pulls above the baseline),
    # the size with the strongest pull.
    reached = [mask for mask, value in zip(masks, pulls, strict=True) if value >= goal]
    mask = dilate(largest_component(reached[0] if reached else masks[int(np.argmax(pulls))]), params.pad)
    return masked_trigger(mask, bug)
