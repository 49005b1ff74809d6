"""Trigger reverse-engineering (Mudjacking, the authors' method): occlusion attribution, then 2-means.

1. Occlusion (Captum) of f(x) = 1 − cos(h(x), h(x_r)) on the bug input, a window
   over all channels sliding with a stride, baseline 0 in normalised space; the
   map is averaged over channels to one score per pixel.
2. 2-means on the per-pixel scores; the minority cluster is the mask, and the
   pattern is the bug's pixels under it.

The occlusion map is also the ranking the grow method (mudjack/intake/grow.py) grows on.
"""

from __future__ import annotations

import numpy as np
import torch

from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.masks import masked_trigger
from mudjack.triggers import Trigger


@torch.no_grad()
def occlusion_map(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                  reference: np.ndarray, *, window: int, stride: int, batch_size: int) -> np.ndarray:
    """Per-pixel occlusion scores (H, W): how much hiding a pixel moves the bug toward x_r."""
    encoder = encoder.eval()
    ref_features = encoder(adapter.preprocess(reference[None]))
    normalised = encoder.normalize(adapter.preprocess(bug[None]))

    def distance(inputs: torch.Tensor) -> torch.Tensor:
        return 1.0 - cosine(encoder.backbone(inputs), ref_features)

    from captum.attr import Occlusion  # imported here: slow to import, only intake needs it

    channels = normalised.shape[1]
    attribution = Occlusion(distance).attribute(
        normalised,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=0.0,
        perturbations_per_eval=batch_size,
    )
    return attribution[0].mean(0).numpy()


def two_means_mask(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-means over the scores; the smaller cluster (ties: the higher-scoring one) is the mask."""
    from sklearn.cluster import KMeans

    flat = scores.reshape(-1, 1).astype(np.float64)
    if np.ptp(flat) == 0:
        return np.zeros(scores.shape, dtype=bool)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(flat)
    sizes = np.bincount(labels, minlength=2)
    means = [flat[labels == k].mean() for k in (0, 1)]
    minority = int(np.argmin(sizes)) if sizes[0] != sizes[1] else int(np.argmax(means))
    return (labels == minority).reshape(scores.shape)


def occlusion_trigger(bug: np.ndarray, scores: np.ndarray, seed: int = 0) -> Trigger:
    """The authors' trigger: the 2-means minority of the occlusion map, the bug's pixels under it."""
    return masked_trigger(two_means_mask(scores, seed), bug)
