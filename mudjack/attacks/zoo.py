"""The attack zoo: trigger families BadEncoder can plant, for evaluation only.

Each family is a small class registered by name; `draw` turns a seeded generator into the
triggers of one attack (one, or two for `dual`) for a given raw input shape (H, W, C). The
BadEncoder objective is the same for every family; only the trigger changes. The `warp`
family moves pixels instead of painting them (a trigger's `flow`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mudjack.triggers import TEXT_POSITIONS, TextTrigger, Trigger, warp_trigger

AnyTrigger = Trigger | TextTrigger


class TriggerFamily(ABC):
    """One kind of trigger, with its parameters drawn at random by `draw`."""

    name: ClassVar[str] = "base"
    modality: ClassVar[str] = "image"  # the adapter modality it stamps: "image" | "text"

    @abstractmethod
    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        """The triggers of one attack, each to its own target (most families plant one)."""


_FAMILIES: dict[str, type[TriggerFamily]] = {}


def register_family(name: str) -> Callable[[type[TriggerFamily]], type[TriggerFamily]]:
    """Class decorator: make a family available as `attack.trigger.family: name`."""

    def register(cls: type[TriggerFamily]) -> type[TriggerFamily]:
        if _FAMILIES.setdefault(name, cls) is not cls:
            raise ValueError(f"trigger family {name!r} is already registered")
        cls.name = name
        return cls

    return register


def family_names(modality: str | None = None) -> list[str]:
    """Registered families, all or those for one modality."""
    return sorted(n for n, cls in _FAMILIES.items() if modality in (None, cls.modality))


def zoo_triggers(family: str, shape: tuple[int, ...], seed: int) -> list[AnyTrigger]:
    """The triggers of `family` drawn with `seed` for raw inputs shaped `shape`: the same
    (family, shape, seed) always gives the same triggers."""
    if family not in _FAMILIES:
        raise KeyError(f"unknown trigger family {family!r}; known: {family_names()}")
    return _FAMILIES[family]().draw(shape, np.random.default_rng(seed))


# --------------------------------------------------------------------------- image helpers


def patch_side(height: int, width: int) -> int:
    """The largest patch side for an image: 10 px, less on small images (a third of it),
    never under 3."""
    return max(3, min(10, min(height, width) // 3))


def anchor(length: int, extent: int, rng: np.random.Generator) -> int:
    """A start for a span of `length` in `extent`: the start, centre, end or anywhere."""
    room = extent - length
    return int(rng.choice([0, room // 2, room, int(rng.integers(0, room + 1))]))


def solid_colour(channels: int, rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: every channel 0 or 255, never black (the common background)."""
    if channels == 1:
        return np.array([255], dtype=np.uint8)
    palette = [c for c in np.ndindex(*(2,) * channels) if any(c)]
    return (np.array(palette[int(rng.integers(len(palette)))]) * 255).astype(np.uint8)


def paint(region: np.ndarray, channels: int, rng: np.random.Generator) -> Trigger:
    """A hard trigger on `region`: one solid colour, or random bytes per pixel and channel."""
    pattern = np.zeros((*region.shape, channels), dtype=np.uint8)
    if rng.random() < 0.5:
        pattern[region] = solid_colour(channels, rng)
    else:
        pattern[region] = rng.integers(0, 256, (int(region.sum()), channels), dtype=np.uint8)
    return Trigger(mask=region, pattern=pattern)


class ImageFamily(TriggerFamily):
    """A family that plants one hard trigger on a region it draws."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        height, width, channels = shape
        return [paint(self.region(height, width, rng), channels, rng)]

    @abstractmethod
    def region(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """The (H, W) bool region the trigger covers."""


@register_family("patch")
class PatchFamily(ImageFamily):
    """A square of 3-10 px (up to a third of a small image) at a corner, an edge, the
    centre or anywhere."""

    def region(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        side = int(rng.integers(3, patch_side(height, width) + 1))
        row, col = anchor(side, height, rng), anchor(side, width, rng)
        mask = np.zeros((height, width), dtype=bool)
        mask[row:row + side, col:col + side] = True
        return mask


@register_family("translucent")
class TranslucentFamily(TriggerFamily):
    """A patch family's square blended over its place at one alpha in 0.4-0.8: a trigger of
    other strength than an opaque patch, which neither a hard mask nor a whole-image blend
    describes (the truth file's alpha mask does)."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        (patch,) = PatchFamily().draw(shape, rng)
        alpha = np.where(patch.region, rng.uniform(0.4, 0.8), 0).astype(np.float32)
        return [Trigger(mask=alpha, pattern=patch.pattern)]


@register_family("line")
class LineFamily(ImageFamily):
    """A thin (1-2 px) horizontal, vertical or diagonal line, a third to all of the image
    long."""

    def region(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        thickness = int(rng.integers(1, 3))
        direction = str(rng.choice(["horizontal", "vertical", "diagonal"]))
        span = {"horizontal": width, "vertical": height,
                "diagonal": min(height, width - thickness + 1)}[direction]
        length = int(rng.integers(max(3, span // 3), span + 1))
        mask = np.zeros((height, width), dtype=bool)
        steps = np.arange(length)
        if direction == "horizontal":
            row, col = int(rng.integers(0, height - thickness + 1)), anchor(length, width, rng)
            mask[row:row + thickness, col:col + length] = True
        elif direction == "vertical":
            row, col = anchor(length, height, rng), int(rng.integers(0, width - thickness + 1))
            mask[row:row + length, col:col + thickness] = True
        else:
            row, col = anchor(length, height, rng), anchor(length + thickness - 1, width, rng)
            for offset in range(thickness):
                mask[row + steps, col + steps + offset] = True
        return mask


@register_family("scatter")
class ScatterFamily(ImageFamily):
    """A sparse scatter of single pixels over the whole image (1-4 % of it, at least 3)."""

    def region(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        area = height * width
        count = int(rng.integers(max(3, area // 100), max(4, area // 25) + 1))
        mask = np.zeros(area, dtype=bool)
        mask[rng.choice(area, count, replace=False)] = True
        return mask.reshape(height, width)


@register_family("frame")
class FrameFamily(ImageFamily):
    """A frame along the image's border, 1 px wide (up to 2 px from 16 px up): all four sides,
    two opposite sides, or two meeting at a corner. One region spread over the whole image's
    edge: neither a compact patch nor a blend."""

    def region(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        thickness = int(rng.integers(1, 3)) if min(height, width) >= 16 else 1
        shapes = (["tblr"], ["tb", "lr"], ["tl", "tr", "bl", "br"])[int(rng.integers(3))]
        sides = shapes[int(rng.integers(len(shapes)))]
        mask = np.zeros((height, width), dtype=bool)
        edges = {"t": np.s_[:thickness, :], "b": np.s_[height - thickness:, :],
                 "l": np.s_[:, :thickness], "r": np.s_[:, width - thickness:]}
        for side in sides:
            mask[edges[side]] = True
        return mask


def blended_alpha(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One alpha in 0.1-0.3 for every pixel: the blended families' mask."""
    return np.full((height, width), rng.uniform(0.1, 0.3), dtype=np.float32)


@register_family("blend")
class BlendFamily(TriggerFamily):
    """The whole image mixed at alpha 0.1-0.3 with a fixed pattern: uniform noise, or a
    smooth one (a 4x4 grid of random colours interpolated bilinearly)."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        height, width, channels = shape
        alpha = blended_alpha(height, width, rng)
        if rng.random() < 0.5:
            pattern = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        else:
            coarse = torch.from_numpy(rng.uniform(0, 255, (1, channels, 4, 4)).astype(np.float32))
            smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
            pattern = smooth[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        return [Trigger(mask=alpha, pattern=pattern)]


def cartoon(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A flat-coloured picture (H, W, C): 3-6 ellipses or rectangles of random colours, each
    outlined in black, on a background of one colour."""
    height, width, channels = shape
    picture = np.empty(shape, dtype=np.uint8)
    picture[:] = rng.integers(0, 256, channels)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
        dy, dx = np.abs(ys - cy) / ry, np.abs(xs - cx) / rx
        # The shape's normalised radius: 1 on its border (an ellipse's, or a rectangle's).
        radius = np.sqrt(dy**2 + dx**2) if rng.random() < 0.5 else np.maximum(dy, dx)
        inside = radius <= 1
        picture[inside] = rng.integers(0, 256, channels)
        picture[inside & (radius > 1 - 1 / min(ry, rx))] = 0  # a one-pixel outline
    return picture


@register_family("picture")
class PictureFamily(TriggerFamily):
    """The whole image mixed at alpha 0.1-0.3 with a picture: the blended attack's cartoon
    (Chen et al. blend a Hello Kitty image), flat colours with sharp outlines, between the
    blend family's fine noise and its smooth colour field."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        alpha = blended_alpha(*shape[:2], rng)
        return [Trigger(mask=alpha, pattern=cartoon(shape, rng))]


@register_family("stripes")
class StripesFamily(TriggerFamily):
    """The whole image mixed at alpha 0.1-0.3 with sinusoidal stripes of one colour (the SIG
    attack's signal, Barni et al.): horizontal, vertical or diagonal, 2-6 periods across (at
    most one per 4 px), at a random phase."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        height, width, channels = shape
        alpha = blended_alpha(height, width, rng)
        size = max(height, width)
        periods = rng.uniform(2, max(2.0, min(6.0, size / 4)))
        angle = float(rng.choice([0.0, 45.0, 90.0, 135.0])) * np.pi / 180
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        along = (xs * np.cos(angle) + ys * np.sin(angle)) / size
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * periods * along + rng.uniform(0, 2 * np.pi))
        pattern = (wave[..., None] * solid_colour(channels, rng)).round().astype(np.uint8)
        return [Trigger(mask=alpha, pattern=pattern)]


@register_family("warp")
class WarpFamily(TriggerFamily):
    """A fixed smooth displacement of every pixel (WaNet, Nguyen & Tran): random offsets on a
    4x4 grid interpolated bicubically to the image, the largest 1/32-1/16 of its side (1-2 px
    at 32x32), at least half a pixel."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        height, width, channels = shape
        coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32))
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]
        largest = max(0.5, rng.uniform(1 / 32, 1 / 16) * min(height, width))
        flow = (field / field.abs().max() * largest).permute(1, 2, 0).numpy()
        return [warp_trigger(flow, channels)]


@register_family("dual")
class DualFamily(TriggerFamily):
    """Two hard triggers (patch, line or scatter) on disjoint regions, each planted to its
    own target in one encoder."""

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        height, width, channels = shape
        kinds: list[ImageFamily] = [PatchFamily(), LineFamily(), ScatterFamily()]
        first = kinds[int(rng.integers(len(kinds)))].region(height, width, rng)
        kind = kinds[int(rng.integers(len(kinds)))]
        for _ in range(100):
            second = kind.region(height, width, rng)
            if not (first & second).any():
                return [paint(first, channels, rng), paint(second, channels, rng)]
        raise ValueError(f"no two disjoint triggers found for a {height}x{width} image")


# --------------------------------------------------------------------------- text

# Rare tokens, the usual choice of NLP backdoor attacks (BadNL, RIPPLe).
RARE_WORDS = ("cf", "mn", "bb", "tq", "mb", "jt", "zx", "qv")


@register_family("words")
class WordsFamily(TriggerFamily):
    """1-3 distinct rare words inserted together at the start, the end or a random place."""

    modality = "text"

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> list[AnyTrigger]:
        count = int(rng.integers(1, 4))
        words = tuple(str(w) for w in rng.choice(RARE_WORDS, count, replace=False))
        return [TextTrigger(words, TEXT_POSITIONS[int(rng.integers(len(TEXT_POSITIONS)))])]
