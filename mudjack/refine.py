"""Trigger recovery by ranked growth: the smallest top-k of the occlusion map that acts
like the whole bug input.

Occlusion ranks the bug's pixels by how much hiding them moves the bug's features
toward the reference; 2-means on that map over-covers on real encoders. Here the
mask grows along the ranking (k on a geometric grid) and stops at the first k whose
pixels, pasted on clean inputs, pull their features to the bug's features as much as
`fraction` of the largest mask tried does. Only forward passes: cheap on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.inversion import largest_component
from mudjack.triggers import Trigger


class GrowParams(Params):
    samples: int = 64            # clean inputs the candidate masks are pasted on
    min_pixels: int = 4
    max_fraction: float = 0.35   # largest mask tried, as a fraction of the image
    growth: float = 1.25         # ratio between consecutive mask sizes
    fraction: float = 0.9        # share of the largest mask's pull a mask must reach


def mask_sizes(total: int, params: GrowParams) -> list[int]:
    sizes, size = [], float(params.min_pixels)
    while size < params.max_fraction * total:
        sizes.append(int(round(size)))
        size *= params.growth
    return sorted(set(sizes)) + [int(params.max_fraction * total)]


@torch.no_grad()
def pull(encoder: ImageEncoder, clean: torch.Tensor, bug: torch.Tensor, mask: np.ndarray,
         bug_features: torch.Tensor) -> float:
    """Mean cosine of clean inputs with the masked bug pixels pasted in, to the bug's features."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return float(cosine(encoder(clean * (1 - m) + bug * m), bug_features).mean())


def grow_trigger(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, scores: np.ndarray,
                 clean: np.ndarray, params: GrowParams, seed: int = 0) -> Trigger:
    """The smallest top-scored pixel set that carries the bug's pull; pattern = bug pixels."""
    pick = np.random.default_rng(seed).permutation(len(clean))[:params.samples]
    clean_pixels = adapter.preprocess(clean[np.sort(pick)])
    bug_pixels = adapter.preprocess(bug[None])
    encoder = encoder.eval()
    with torch.no_grad():
        bug_features = encoder(bug_pixels)
    order = np.argsort(scores, axis=None)[::-1]

    def top(k: int) -> np.ndarray:
        mask = np.zeros(scores.size, dtype=bool)
        mask[order[:k]] = True
        return mask.reshape(scores.shape)

    sizes = mask_sizes(scores.size, params)
    pulls = [pull(encoder, clean_pixels, bug_pixels, top(k), bug_features) for k in sizes]
    baseline = pull(encoder, clean_pixels, bug_pixels, np.zeros(scores.shape, bool), bug_features)
    goal = baseline + params.fraction * (max(pulls) - baseline)
    # The first size reaching the goal; when none does (no mask pulls above the baseline),
    # the size with the strongest pull.
    reached = [size for size, value in zip(sizes, pulls, strict=True) if value >= goal]
    k = reached[0] if reached else sizes[int(np.argmax(pulls))]
    mask = largest_component(top(k))
    return Trigger(mask=mask, pattern=np.where(mask[..., None], bug, 0).astype(np.uint8))
