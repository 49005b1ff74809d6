"""Trigger inversion: find the few pixels of the bug input that, pasted on clean inputs,
drag their features to the bug's.

The authors' occlusion + 2-means over-covers on real encoders (190-490 pixels for a
100-pixel patch on resnet20). Here the pattern is the bug's own pixels and only a
soft mask m is optimised:

    min_m  −mean cos(h(x·(1−m) + x_b·m), h(x_b)) + λ·mean(m)

over a batch of clean inputs x; the backdoor is a shortcut, so a small mask already
reaches the bug's features, while class content needs far more pixels. The mask is
then binarised at `threshold` and, optionally, reduced to its largest connected blob.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Fraction, LearningRate, Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.masks import largest_component, masked_trigger
from mudjack.intake.soft import frozen, minimise
from mudjack.triggers import Trigger, blend


class InversionParams(Params):
    steps: int = Field(200, ge=1, le=20_000)
    lr: LearningRate = 0.1
    samples: int = Field(64, ge=1)    # clean inputs the mask is optimised on
    sparsity: float = Field(0.5, ge=0)  # λ: weight of the mask's mean size
    threshold: Fraction = 0.5
    largest_component: bool = True


def _soft_mask_loss(encoder: ImageEncoder, clean: torch.Tensor, bug: torch.Tensor,
                    bug_features: torch.Tensor, logits: torch.Tensor,
                    sparsity: float) -> torch.Tensor:
    mask = torch.sigmoid(logits)
    return -cosine(encoder(blend(clean, bug, mask)), bug_features).mean() + sparsity * mask.mean()


def invert_trigger(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                   clean: np.ndarray, *, params: InversionParams, seed: int = 0) -> Trigger:
    """The mask of bug pixels that carries the backdoor; pattern = the bug's pixels under it."""
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(clean), generator=generator)[:params.samples].numpy()
    clean_pixels = adapter.preprocess(clean[np.sort(pick)])
    bug_pixels = adapter.preprocess(bug[None])
    height, width = bug.shape[:2]
    logits = torch.zeros(1, 1, height, width, requires_grad=True)
    with frozen(encoder):  # only the mask is optimised
        with torch.no_grad():
            bug_features = encoder(bug_pixels)
        minimise([logits], lambda: _soft_mask_loss(encoder, clean_pixels, bug_pixels, bug_features, logits,
                                                   params.sparsity), steps=params.steps, lr=params.lr)
    mask = (torch.sigmoid(logits)[0, 0] > params.threshold).numpy()
    if params.largest_component:
        mask = largest_component(mask)
    return masked_trigger(mask, bug)
