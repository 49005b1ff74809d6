"""Triggers: a pattern and a mask, stamped on raw uint8 pixels before normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trigger:
    """`mask` is (H, W) bool, True where the trigger is; `pattern` is (H, W, C) uint8."""

    mask: np.ndarray
    pattern: np.ndarray

    def __post_init__(self) -> None:
        if self.mask.shape != self.pattern.shape[:2]:
            raise ValueError(f"mask {self.mask.shape} does not match pattern {self.pattern.shape}")

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())


def patch_trigger(shape: tuple[int, int, int], size: int, row: int, col: int,
                  value: int = 255) -> Trigger:
    """A square patch of `value` with its top-left corner at (row, col)."""
    height, width, channels = shape
    if row + size > height or col + size > width:
        raise ValueError(f"a {size}px patch at ({row}, {col}) does not fit in {height}x{width}")
    mask = np.zeros((height, width), dtype=bool)
    mask[row:row + size, col:col + size] = True
    pattern = np.zeros((height, width, channels), dtype=np.uint8)
    pattern[mask] = value
    return Trigger(mask=mask, pattern=pattern)


def stamp(images: np.ndarray, trigger: Trigger) -> np.ndarray:
    """x ⊕ t = x·(1−m) + t·m on uint8 images shaped (N, H, W, C) or (H, W, C)."""
    if images.dtype != np.uint8:
        raise TypeError(f"stamp works on uint8 pixels, got {images.dtype}")
    out = images.copy()
    out[..., trigger.mask, :] = trigger.pattern[trigger.mask]
    return out


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(mask_a, mask_b).sum()
    return float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0


def trigger_arrays(trigger: Trigger) -> dict[str, np.ndarray]:
    return {"mask": trigger.mask.astype(np.uint8), "pattern": trigger.pattern}


def trigger_from_arrays(arrays: dict[str, np.ndarray]) -> Trigger:
    return Trigger(mask=arrays["mask"].astype(bool), pattern=arrays["pattern"].astype(np.uint8))
