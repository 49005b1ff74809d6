"""Mask helpers shared by the reversal methods: the pixels a trigger covers, as (H, W) bools."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mudjack.triggers import Trigger


def masked_trigger(mask: np.ndarray, source: np.ndarray) -> Trigger:
    """The trigger whose pattern is `source`'s pixels under `mask` (zero elsewhere)."""
    return Trigger(mask=mask, pattern=np.where(mask[..., None], source, 0).astype(np.uint8))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The mask's largest connected blob (the whole mask when it has at most one)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def dilate(mask: np.ndarray, pad: int) -> np.ndarray:
    """The mask grown by `pad` pixels in every direction (a square structuring element)."""
    if pad <= 0:
        return mask
    padded = np.pad(mask, pad)
    return np.lib.stride_tricks.sliding_window_view(padded, (2 * pad + 1,) * 2).any(axis=(2, 3))


def grown_trigger(trigger: Trigger, bug: np.ndarray, pad: int) -> Trigger:
    """`trigger` with its region grown by `pad` pixels, the new ones the bug input's at alpha 1;
    its own alpha and pattern stay where it had them (a hard trigger stays hard)."""
    region = trigger.region
    grown = dilate(region, pad)
    pattern = np.where(region[..., None], trigger.pattern, bug)
    pattern = np.where(grown[..., None], pattern, 0).astype(np.uint8)
    mask = grown if not trigger.soft else np.where(region, trigger.alpha, grown).astype(np.float32)
    return Trigger(mask=mask, pattern=pattern)


def best_squares(scores: np.ndarray, side: int, count: int = 1) -> list[np.ndarray]:
    """The `count` side × side squares whose scores (occlusion or scan) sum highest, none
    overlapping an earlier one (multi-scale window)."""
    sums = np.lib.stride_tricks.sliding_window_view(scores, (side, side)).sum(axis=(2, 3)).astype(float)
    masks = []
    while len(masks) < count and np.isfinite(sums).any():
        row, col = np.unravel_index(int(np.argmax(sums)), sums.shape)
        mask = np.zeros(scores.shape, dtype=bool)
        mask[row:row + side, col:col + side] = True
        masks.append(mask)
        # every window overlapping this square is out
        sums[max(0, row - side + 1):row + side, max(0, col - side + 1):col + side] = -np.inf
    return masks


def best_square(scores: np.ndarray, side: int) -> np.ndarray:
    """The side × side square whose scores sum highest."""
    return best_squares(scores, side)[0]


def square_corners(shape: tuple[int, int], side: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of side x side squares every `stride` pixels, the far edges included."""
    rows = sorted({*range(0, shape[0] - side + 1, stride), shape[0] - side})
    cols = sorted({*range(0, shape[1] - side + 1, stride), shape[1] - side})
    return [(r, c) for r in rows for c in cols]
