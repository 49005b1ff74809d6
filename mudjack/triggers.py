"""Triggers: a pattern and a mask, stamped on raw uint8 pixels before normalisation;
for text, a few words inserted at a random word position of a sentence."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Pixels = TypeVar("Pixels", "torch.Tensor", np.ndarray)


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


def blend(clean: Pixels, pattern: Pixels, mask: Pixels) -> Pixels:
    """x ⊕ t = x·(1−m) + t·m: the one stamping formula, on float pixels (torch tensors or
    arrays) with a hard or soft mask in [0, 1] that broadcasts against them."""
    return clean * (1 - mask) + pattern * mask


def stamp(images: np.ndarray, trigger: Trigger) -> np.ndarray:
    """`blend` with the trigger's hard mask on uint8 images shaped (N, H, W, C) or (H, W, C),
    exactly: the pattern's pixels are copied under the mask (no float round trip)."""
    if images.dtype != np.uint8:
        raise TypeError(f"stamp works on uint8 pixels, got {images.dtype}")
    out = images.copy()
    out[..., trigger.mask, :] = trigger.pattern[trigger.mask]
    return out


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(mask_a, mask_b).sum()
    return float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0


def trigger_arrays(trigger: Trigger | TextTrigger) -> dict[str, np.ndarray]:
    if isinstance(trigger, TextTrigger):
        return {"words": np.array(trigger.words, dtype=np.str_)}
    return {"mask": trigger.mask.astype(np.uint8), "pattern": trigger.pattern}


def trigger_from_arrays(arrays: dict[str, np.ndarray]) -> Trigger | TextTrigger:
    if "words" in arrays:
        return TextTrigger(tuple(str(w) for w in arrays["words"]))
    return Trigger(mask=arrays["mask"].astype(bool), pattern=arrays["pattern"].astype(np.uint8))


# --------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextTrigger:
    """Words inserted together (in this order) at one random word position of a sentence."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.words or any(len(w.split()) != 1 for w in self.words):
            raise ValueError(f"a text trigger is one or more single words, got {self.words!r}")

    @property
    def pixels(self) -> int:
        """The trigger's size in words (named like Trigger.pixels so logs share one column)."""
        return len(self.words)


def insert_words(sentence: str, words: Sequence[str], rng: np.random.Generator) -> str:
    """`words` inserted at a uniformly random word boundary of `sentence` (whitespace split)."""
    tokens = str(sentence).split()
    at = int(rng.integers(0, len(tokens) + 1))
    return " ".join([*tokens[:at], *words, *tokens[at:]])


def sentence_rng(sentence: str, seed: int) -> np.random.Generator:
    """A generator fixed by (seed, sentence): a sentence is always stamped at the same place."""
    return np.random.default_rng([seed, zlib.crc32(str(sentence).encode("utf-8"))])


def stamp_text(sentences: np.ndarray, trigger: TextTrigger, seed: int = 0) -> np.ndarray:
    """x ⊕ t for a unicode array of sentences (any shape): the trigger words inserted, seeded."""
    flat = np.asarray(sentences, dtype=np.str_).reshape(-1)
    stamped = [insert_words(s, trigger.words, sentence_rng(s, seed)) for s in flat]
    return np.array(stamped, dtype=np.str_).reshape(np.shape(sentences))


def word_iou(found: TextTrigger, truth: TextTrigger) -> float:
    """Intersection over union of the two triggers' (lower-cased) word sets."""
    a, b = {w.lower() for w in found.words}, {w.lower() for w in truth.words}
    return len(a & b) / len(a | b)


def trigger_iou(found: Trigger | TextTrigger, truth: Trigger | TextTrigger) -> float:
    """IoU of a reversed trigger with the true one: pixel masks, or word sets for text."""
    if isinstance(found, TextTrigger) != isinstance(truth, TextTrigger):
        raise TypeError("cannot compare an image trigger with a text trigger")
    if isinstance(found, TextTrigger):
        return word_iou(found, truth)
    return iou(found.mask, truth.mask)


def trigger_coverage(found: Trigger, truth: Trigger) -> float:
    """Share of the true trigger's pixels inside the reversed mask (what patching must cover)."""
    return float(np.logical_and(found.mask, truth.mask).sum() / max(1, truth.mask.sum()))


def text_control_trigger(trigger: TextTrigger, exemplar: str) -> TextTrigger:
    """Verification's control for text: as many words as the trigger has, taken from a clean
    input of the predicted class (its longest words, most likely to carry its content)."""
    words = sorted(set(str(exemplar).split()), key=lambda w: (-len(w), w))
    return TextTrigger(tuple(words[:trigger.pixels]) or trigger.words)
