"""Triggers: an alpha mask and a pattern, stamped on raw uint8 pixels before normalisation, with
an optional warp (a fixed displacement field, the WaNet attack's trigger) applied first; for
text, a few words inserted at a word position of a sentence."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar, cast

import numpy as np

if TYPE_CHECKING:
    import torch

Pixels = TypeVar("Pixels", "torch.Tensor", np.ndarray)


@dataclass(frozen=True)
class Trigger:
    """`mask` is the alpha mask (H, W): bool for a hard trigger (alpha 1 where True, the
    pixels replaced) or float32 in [0, 1] for a soft one (a blend is a small alpha
    everywhere); `pattern` is (H, W, C) uint8. Stamping is round(x·(1−α) + t·α).

    A bool mask stays bool (it indexes arrays, and old code relies on that); any other
    dtype becomes float32 alpha.

    `flow` (H, W, 2), float32 pixels, warps the image before the blend: output pixel (i, j) is
    the input sampled bilinearly at (i + flow[i, j, 0], j + flow[i, j, 1]), the border
    repeated beyond the edge. A pure warp has alpha 0 everywhere (`warp_trigger`).
    """

    mask: np.ndarray
    pattern: np.ndarray
    flow: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.pattern.ndim != 3 or self.mask.shape != self.pattern.shape[:2]:
            raise ValueError(f"a trigger is a mask (H, W) and a pattern (H, W, C): got mask "
                             f"{self.mask.shape} and pattern {self.pattern.shape}")
        if self.mask.dtype != bool:
            alpha = np.asarray(self.mask, dtype=np.float32)
            if not (np.isfinite(alpha).all() and alpha.min() >= 0 and alpha.max() <= 1):
                raise ValueError("an alpha mask must lie in [0, 1]")
            object.__setattr__(self, "mask", alpha)
        if self.flow is not None:
            flow = np.asarray(self.flow, dtype=np.float32)
            if flow.shape != (*self.mask.shape, 2) or not np.isfinite(flow).all():
                raise ValueError(f"a warp's flow must be finite pixel offsets shaped (H, W, 2) = "
                                 f"{(*self.mask.shape, 2)}, got {flow.shape}")
            object.__setattr__(self, "flow", flow)

    @property
    def warps(self) -> bool:
        """Whether the trigger moves pixels (a flow with any nonzero offset)."""
        return self.flow is not None and bool(np.any(self.flow))

    @property
    def soft(self) -> bool:
        return self.mask.dtype != bool

    @property
    def alpha(self) -> np.ndarray:
        """The mask as float32 alpha in [0, 1]."""
        return self.mask.astype(np.float32)

    @property
    def region(self) -> np.ndarray:
        """Where the trigger touches the image at all (alpha > 0), as bool."""
        return self.mask > 0

    @property
    def pixels(self) -> int:
        """Pixels with alpha > 0 (a blend counts the whole image; see `alpha` for weights)."""
        return int(self.region.sum())

    @property
    def spread(self) -> bool:
        """Whether it touches more than half of the image: an image-wide fit, not a patch."""
        return float(self.region.mean()) > 0.5


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


def warp_trigger(flow: np.ndarray, channels: int) -> Trigger:
    """A pure warp: the flow (H, W, 2) and nothing blended (alpha 0 everywhere)."""
    height, width = np.shape(flow)[:2]
    return Trigger(mask=np.zeros((height, width), dtype=np.float32),
                   pattern=np.zeros((height, width, channels), dtype=np.uint8), flow=flow)


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Float images (N, C, H, W) sampled bilinearly at each pixel plus its offset; `flow` is
    (N, H, W, 2) or (H, W, 2) pixels (rows, columns), the border repeated beyond the edge."""
    import torch
    import torch.nn.functional as F

    height, width = images.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=images.dtype, device=images.device),
                                torch.arange(width, dtype=images.dtype, device=images.device), indexing="ij")
    flow = flow.to(images).expand(len(images), height, width, 2)
    # grid_sample wants (x, y) in [-1, 1], pixel centres at the ends (align_corners)
    x = (cols + flow[..., 1]) * (2 / max(width - 1, 1)) - 1
    y = (rows + flow[..., 0]) * (2 / max(height - 1, 1)) - 1
    return F.grid_sample(images, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def warped(images: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) or (H, W, C) warped by `flow` (see `warp`), rounded."""
    import torch

    batch = torch.from_numpy(np.array(images, dtype=np.float32)).reshape(-1, *images.shape[-3:])
    out = warp(batch.permute(0, 3, 1, 2), torch.from_numpy(flow)).permute(0, 2, 3, 1)
    return out.round().clamp(0, 255).to(torch.uint8).numpy().reshape(images.shape)


def blend(clean: Pixels, pattern: Pixels, mask: Pixels) -> Pixels:
    """x ⊕ t = x·(1−m) + t·m: the one stamping formula, on float pixels (torch tensors or
    arrays) with a hard or soft mask in [0, 1] that broadcasts against them."""
    return clean * (1 - mask) + pattern * mask


def stamp(images: np.ndarray, trigger: Trigger) -> np.ndarray:
    """x ⊕ t = round(x·(1−α) + t·α) on uint8 images shaped (N, H, W, C) or (H, W, C), x warped
    first when the trigger has a flow.

    A bool mask copies the pattern in (the same bytes the formula gives for alpha 0/1).
    """
    if images.dtype != np.uint8:
        raise TypeError(f"stamp works on uint8 pixels, got {images.dtype}")
    if trigger.warps:
        images = warped(images, cast(np.ndarray, trigger.flow))
    if trigger.soft:
        alpha = trigger.mask[..., None]
        mixed = blend(images.astype(np.float32), trigger.pattern.astype(np.float32), alpha)
        return np.rint(mixed).clip(0, 255).astype(np.uint8)
    out = images.copy()
    out[..., trigger.mask, :] = trigger.pattern[trigger.mask]
    return out


def unstamp(image: np.ndarray, trigger: Trigger, fill: np.ndarray) -> np.ndarray:
    """The trigger taken off one stamped uint8 image (H, W, C): where alpha < 1/2 the blend is
    undone, x = (x ⊕ t − t·α) / (1 − α); where the trigger covers the image (alpha >= 1/2, a
    patch) nothing of the input is left to recover and `fill`'s pixels take its place."""
    alpha = trigger.alpha[..., None]
    pixels, pattern = image.astype(np.float32), trigger.pattern.astype(np.float32)
    thin = np.minimum(alpha, 0.5)
    undone = (pixels - pattern * thin) / (1 - thin)
    out = np.where(alpha < 0.5, undone, np.asarray(fill, dtype=np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union of two masks (any nonzero value counts as inside)."""
    union = np.logical_or(mask_a, mask_b).sum()
    return float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0


def trigger_arrays(trigger: Trigger | TextTrigger) -> dict[str, np.ndarray]:
    """Arrays that describe the trigger (truth files, bug folders). A hard mask is stored as
    uint8 0/1 and a soft one as float32 alpha; a text position only when not the default,
    so today's triggers keep their bytes."""
    if isinstance(trigger, TextTrigger):
        position = {} if trigger.position == "random" else {"position": np.array(trigger.position)}
        return {"words": np.array(trigger.words, dtype=np.str_), **position}
    mask = trigger.mask if trigger.soft else trigger.mask.astype(np.uint8)
    flow = {"flow": trigger.flow} if trigger.flow is not None else {}
    return {"mask": mask, "pattern": trigger.pattern, **flow}


def trigger_from_arrays(arrays: dict[str, np.ndarray]) -> Trigger | TextTrigger:
    """Inverse of `trigger_arrays`; an integer mask is a hard 0/1 one (other integers are
    refused: alpha saved as bytes would read as a hard mask), a float mask alpha; a `flow`
    alone is a pure warp."""
    if "words" in arrays:
        words = _text(arrays["words"], "words")
        if words.ndim > 1:
            raise ValueError(f"a text trigger's words must be a list of words, got shape {words.shape}")
        position = str(_text(arrays["position"], "position")) if "position" in arrays else "random"
        # one string is the phrase itself: np.array("cf mn") is the words ("cf", "mn")
        phrase = str(words).split() if words.ndim == 0 else [str(w) for w in words]
        return TextTrigger(tuple(phrase), cast(TextPosition, position))
    if "flow" in arrays and "mask" not in arrays and "pattern" not in arrays:  # a pure warp
        return warp_trigger(_flow(arrays["flow"]), channels=1)
    flow = {"flow": _flow(arrays["flow"])} if "flow" in arrays else {}
    mask = arrays["mask"]
    if mask.dtype.kind in "iu" and mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"an integer mask must be 0 or 1 (a hard mask), got values up to {mask.max()}; "
                         "give alpha as floats in [0, 1] (alpha in bytes 0-255: divide by 255)")
    if mask.dtype.kind in "biu":
        mask = mask.astype(bool)
    return Trigger(mask=mask, pattern=_pixels(arrays["pattern"]), **flow)


def _flow(flow: np.ndarray) -> np.ndarray:
    """A stored warp as float32 pixel offsets (H, W, 2); ValueError for anything else."""
    if flow.dtype.kind not in "iuf" or flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"a warp's flow must be pixel offsets shaped (H, W, 2), got {flow.dtype} "
                         f"{flow.shape}")
    return flow.astype(np.float32)


def _text(values: np.ndarray, name: str) -> np.ndarray:
    """Stored text as unicode: bytes (np.array([b"cf"])) decoded as UTF-8; anything else refused."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind != "U":
        raise ValueError(f"a text trigger's {name} must be text, got {values.dtype}")
    return values


def _pixels(pattern: np.ndarray) -> np.ndarray:
    """A stored pattern as uint8 pixels, fractions rounded; ValueError for values a cast would
    wrap (300 -> 44) or a pattern scaled to [0, 1] (it would become black)."""
    numeric = pattern.dtype.kind in "biuf"
    in_range = numeric and bool(np.isfinite(pattern).all()) and (
        pattern.size == 0 or 0 <= pattern.min() <= pattern.max() <= 255)
    if not in_range:
        shown = f"{pattern.min()} to {pattern.max()}" if numeric and pattern.size else str(pattern.dtype)
        raise ValueError(f"a trigger's pattern must be pixels in [0, 255], got {shown}")
    if not np.array_equal(pattern, np.rint(pattern)):
        if pattern.max() <= 1:
            raise ValueError("a trigger's pattern must be pixels in [0, 255], got fractions of at most 1 "
                             "(a pattern scaled to [0, 1]? multiply it by 255)")
        pattern = np.rint(pattern)  # fractions of 0-255 (an upsampled or sine pattern): stamping rounds too
    return pattern.astype(np.uint8)


# --------------------------------------------------------------------------- text


TextPosition = Literal["random", "start", "end"]
TEXT_POSITIONS: tuple[TextPosition, ...] = ("random", "start", "end")


@dataclass(frozen=True)
class TextTrigger:
    """Words inserted together (in this order) at one word position of a sentence: a random
    word boundary (the default), or the start or the end."""

    words: tuple[str, ...]
    position: TextPosition = "random"

    def __post_init__(self) -> None:
        if not self.words or any(len(w.split()) != 1 for w in self.words):
            raise ValueError(f"a text trigger is one or more single words, got {self.words!r}")
        if self.position not in TEXT_POSITIONS:
            raise ValueError(f"text trigger position {self.position!r} not in {TEXT_POSITIONS}")

    def insert(self, sentence: str, rng: np.random.Generator) -> str:
        return insert_words(sentence, self.words, rng, position=self.position)

    @property
    def pixels(self) -> int:
        """The trigger's size in words (named like Trigger.pixels so logs share one column)."""
        return len(self.words)


def insert_words(sentence: str, words: Sequence[str], rng: np.random.Generator, *,
                 position: TextPosition = "random") -> str:
    """`words` inserted at a word boundary of `sentence` (whitespace split): uniformly random
    (drawn from `rng`), or the first or last one (`rng` untouched)."""
    tokens = str(sentence).split()
    if position == "random":
        at = int(rng.integers(0, len(tokens) + 1))
    else:
        at = 0 if position == "start" else len(tokens)
    return " ".join([*tokens[:at], *words, *tokens[at:]])


def remove_words(sentence: str, words: Sequence[str]) -> str:
    """`sentence` with the first run of `words` taken out (insert_words undone); where the run
    is not there whole, the first occurrence of each of its words. Whitespace split and joined."""
    tokens, run = str(sentence).split(), list(words)
    for at in range(len(tokens) - len(run) + 1):
        if tokens[at:at + len(run)] == run:
            return " ".join(tokens[:at] + tokens[at + len(run):])
    for word in run:
        if word in tokens:
            tokens.remove(word)
    return " ".join(tokens)


def sentence_rng(sentence: str, seed: int) -> np.random.Generator:
    """A generator fixed by (seed, sentence): a sentence is always stamped at the same place."""
    return np.random.default_rng([seed, zlib.crc32(str(sentence).encode("utf-8"))])


def stamp_text(sentences: np.ndarray, trigger: TextTrigger, seed: int = 0) -> np.ndarray:
    """x ⊕ t for a unicode array of sentences (any shape): the trigger words inserted, seeded."""
    flat = np.asarray(sentences, dtype=np.str_).reshape(-1)
    stamped = [trigger.insert(s, sentence_rng(s, seed)) for s in flat]
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
    return iou(found.region, truth.region)


def trigger_coverage(found: Trigger, truth: Trigger) -> float:
    """Share of the true trigger's pixels (alpha > 0) inside the reversed one's (alpha > 0):
    what patching must cover."""
    return float(np.logical_and(found.region, truth.region).sum() / max(1, truth.pixels))


def trigger_correlation(found: Trigger, truth: Trigger) -> float:
    """Pearson correlation of α·t (every pixel and channel) between two image triggers: how
    well a recovered soft trigger matches a blend, where IoU says nothing (its region is the
    whole image). 1 is the same trigger up to scale; 0 when either α·t is constant."""
    a, b = ((t.alpha[..., None] * t.pattern).ravel() for t in (found, truth))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def flow_cosine(found: Trigger, truth: Trigger) -> float:
    """Cosine between two triggers' flows (every pixel's offset): 1 is the same warp up to
    scale, 0 when either does not warp."""
    if not (found.warps and truth.warps):
        return 0.0
    a, b = (np.asarray(t.flow, dtype=np.float64).ravel() for t in (found, truth))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def text_control_trigger(trigger: TextTrigger, exemplar: str) -> TextTrigger:
    """Verification's control for text without a classifier to search with: as many words as
    the trigger has, taken from a clean input of the predicted class (its longest words, most
    likely to carry its content; intake uses the strongest run, mudjack.intake.phrase)."""
    words = sorted(set(str(exemplar).split()), key=lambda w: (-len(w), w))
    return TextTrigger(tuple(words[:trigger.pixels]) or trigger.words, trigger.position)
