"""Trigger reverse-engineering: the reversal methods, registered by name, behind one call.

`intake.reverse.method` in params.yaml names the method for image encoders:
- `occlusion` (the authors'): occlusion map + 2-means (mudjack/intake/occlusion.py);
- `grow` (mudjack's default): the smallest top-k of the occlusion map (or of a flip-rate scan)
  that acts like the bug (mudjack/intake/grow.py);
- `inversion`: optimise a soft mask of bug pixels (mudjack/intake/inversion.py).
Text encoders always use token occlusion (mudjack/intake/text.py), with `text_select` and
`text_score`. Every method returns the trigger whose pattern is the bug's pixels under its mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
import torch
from pydantic import Field, field_validator

from mudjack.config import BatchSize, Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.intake.grow import GrowParams, grow_trigger
from mudjack.intake.inversion import InversionParams, invert_trigger
from mudjack.intake.occlusion import occlusion_map, occlusion_trigger
from mudjack.intake.text import reverse_text
from mudjack.triggers import TextTrigger, Trigger

FlipRate = Callable[[torch.Tensor], float]


class ReverseParams(Params):
    """The `intake.reverse` section: `method` is a name in REVERSAL_METHODS; window, stride and
    batch_size set the occlusion map (occlusion and grow)."""

    method: str = "grow"
    window: int = Field(2, ge=1)
    stride: int = Field(1, ge=1)
    batch_size: BatchSize = 256
    grow: GrowParams = GrowParams()
    inversion: InversionParams = InversionParams()
    text_select: Literal["kmeans", "top1"] = "kmeans"  # text: 2-means (higher cluster) or best word
    text_score: Literal["self", "reference"] = "self"  # text: see mudjack/intake/text.py

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        if method not in REVERSAL_METHODS:
            raise ValueError(f"unknown reversal method {method!r}; known: {sorted(REVERSAL_METHODS)}")
        return method


class ReversalMethod(Protocol):
    def __call__(self, encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                 reference: np.ndarray, *, params: ReverseParams, seed: int,
                 clean: np.ndarray | None, flip_rate: FlipRate | None) -> Trigger: ...


REVERSAL_METHODS: dict[str, ReversalMethod] = {}


def register_reversal(name: str) -> Callable[[ReversalMethod], ReversalMethod]:
    """Register a reversal method under `name` (as encoder adapters are): `@register_reversal("x")`."""

    def register(method: ReversalMethod) -> ReversalMethod:
        if name in REVERSAL_METHODS:
            raise ValueError(f"reversal method {name!r} is already registered")
        REVERSAL_METHODS[name] = method
        return method

    return register


def reverse_engineer(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                     reference: np.ndarray, *, params: ReverseParams, seed: int = 0,
                     clean: np.ndarray | None = None,
                     flip_rate: FlipRate | None = None) -> Trigger | TextTrigger:
    """The reversed trigger of one bug input, by `params.method` (text: token occlusion).

    Grow and inversion need `clean` inputs (of classes other than the one the bug is pushed
    to); grow measures a candidate by `flip_rate` (the deployed classifier's) when given.
    """
    if adapter.modality == "text":
        return reverse_text(encoder, adapter, bug, reference, mode=params.text_select, seed=seed,
                            score=params.text_score)
    method = REVERSAL_METHODS[params.method]
    return method(encoder, adapter, bug, reference, params=params, seed=seed, clean=clean,
                  flip_rate=flip_rate)


def _occlusion_scores(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                      reference: np.ndarray, params: ReverseParams) -> np.ndarray:
    return occlusion_map(encoder, adapter, bug, reference, window=params.window, stride=params.stride,
                         batch_size=params.batch_size)


def _clean_inputs(clean: np.ndarray | None, method: str) -> np.ndarray:
    if clean is None or len(clean) == 0:
        raise ValueError(f"trigger recovery by {method} needs clean inputs")
    return clean


@register_reversal("occlusion")
def _occlusion(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
               *, params: ReverseParams, seed: int, clean: np.ndarray | None,
               flip_rate: FlipRate | None) -> Trigger:
    return occlusion_trigger(bug, _occlusion_scores(encoder, adapter, bug, reference, params), seed)


@register_reversal("grow")
def _grow(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
          *, params: ReverseParams, seed: int, clean: np.ndarray | None,
          flip_rate: FlipRate | None) -> Trigger:
    clean = _clean_inputs(clean, "grow")
    scores = _occlusion_scores(encoder, adapter, bug, reference, params)
    return grow_trigger(encoder, adapter, bug, scores, clean, params=params.grow, seed=seed,
                        flip_rate=flip_rate)


@register_reversal("inversion")
def _inversion(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
               *, params: ReverseParams, seed: int, clean: np.ndarray | None,
               flip_rate: FlipRate | None) -> Trigger:
    clean = _clean_inputs(clean, "inversion")
    return invert_trigger(encoder, adapter, bug, clean, params=params.inversion, seed=seed)
