"""Trigger reverse-engineering (Mudjacking): occlusion attribution, then 2-means.

1. Occlusion (Captum) of f(x) = 1 − cos(h(x), h(x_r)) on the bug input, a window
   over all channels sliding with a stride, baseline 0 in normalised space; the
   map is averaged over channels to one score per pixel.
2. 2-means on the per-pixel scores; the minority cluster is the mask, and the
   pattern is the bug's pixels under it.

Text (token occlusion): each word of the bug sentence is removed in turn and scored; the
trigger is the higher-mean cluster of a 2-means over the scores (`text_select: kmeans`) or
the single best word (`top1`). Words are whitespace-separated, the unit stamping inserts, so
the reversed trigger can be stamped into other sentences as it is. Scores (`text_score`):
- `self` (default): 1 − cos(h(x_b), h(x_b without word i)), how far removing the word moves
  the bug's own features;
- `reference` (the paper's f): f(x_b) − f(x_b without word i), f(x) = 1 − cos(h(x), h(x_r)).
  On MiniLM + SST-2 its sign depends on the reference: two sentences of one class are far
  apart (cos ~0.25), and the backdoor's target can lie nearer x_r than the bug's clean
  features do; removing "cf" raised f by 0.29 for one report, and 2-means then took every
  other word. The `self` score gave 0.76 and 0.53 for "cf" against at most 0.004 for any
  other word of the same reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine, extract_features
from mudjack.inversion import InversionParams, invert_trigger
from mudjack.refine import GrowParams, grow_trigger
from mudjack.triggers import TextTrigger, Trigger


class ReverseParams(Params):
    """`method`: "occlusion" (the authors': occlusion + 2-means), "grow" (mudjack's default:
    the smallest top-k of the occlusion map that acts like the bug; mudjack/refine.py) or
    "inversion" (optimise a soft mask of bug pixels; mudjack/inversion.py)."""

    method: Literal["occlusion", "grow", "inversion"] = "grow"
    window: int = 2
    stride: int = 1
    batch_size: int = 256
    inversion: InversionParams = InversionParams()
    grow: GrowParams = GrowParams()
    text_select: Literal["kmeans", "top1"] = "kmeans"  # text: 2-means (higher cluster) or best word
    text_score: Literal["self", "reference"] = "self"  # text: see the module docstring


@torch.no_grad()
def occlusion_map(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                  reference: np.ndarray, params: ReverseParams) -> np.ndarray:
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
        sliding_window_shapes=(channels, params.window, params.window),
        strides=(channels, params.stride, params.stride),
        baselines=0.0,
        perturbations_per_eval=params.batch_size,
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


def reverse_engineer(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                     reference: np.ndarray, params: ReverseParams, seed: int = 0,
                     clean: np.ndarray | None = None,
                     flip_rate: Callable[[torch.Tensor], float] | None = None) -> Trigger:
    """The reversed trigger of one bug input; the pattern is the bug's pixels under the mask.

    Grow and inversion need `clean` inputs (of classes other than the one the bug is pushed
    to); grow measures a candidate by `flip_rate` (the deployed classifier's) when given.
    """
    if adapter.modality == "text":
        return reverse_text(encoder, adapter, bug, reference, params.text_select, seed,
                            params.text_score)
    if params.method != "occlusion" and (clean is None or len(clean) == 0):
        raise ValueError(f"trigger recovery by {params.method} needs clean inputs")
    if params.method == "inversion":
        return invert_trigger(encoder, adapter, bug, clean, params.inversion, seed)
    scores = occlusion_map(encoder, adapter, bug, reference, params)
    if params.method == "grow":
        return grow_trigger(encoder, adapter, bug, scores, clean, params.grow, seed, flip_rate)
    mask = two_means_mask(scores, seed)
    pattern = np.where(mask[..., None], bug, 0).astype(np.uint8)
    return Trigger(mask=mask, pattern=pattern)


# --------------------------------------------------------------------------- text


@torch.no_grad()
def word_occlusion_scores(encoder: torch.nn.Module, adapter: EncoderAdapter, bug: np.ndarray,
                          reference: np.ndarray, score: str = "self") -> np.ndarray:
    """One score per word of the bug sentence, for the word removed (see the module docstring)."""
    words = str(bug).split()
    removed = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    features = extract_features(encoder, adapter, np.array([str(reference), str(bug), *removed]))
    if score == "self":
        return (1.0 - cosine(features[2:], features[1:2])).numpy()
    distance = 1.0 - cosine(features[1:], features[:1])
    return (distance[0] - distance[1:]).numpy()


def select_trigger_words(scores: np.ndarray, mode: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Boolean selector of the trigger words: the higher-mean 2-means cluster, or the best word."""
    chosen = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0:
        return chosen
    if mode == "top1" or len(scores) < 3 or np.ptp(scores) == 0:
        chosen[int(np.argmax(scores))] = True
        return chosen
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(
        scores.reshape(-1, 1).astype(np.float64))
    high = int(np.argmax([scores[labels == k].mean() for k in (0, 1)]))
    return labels == high


def reverse_text(encoder: torch.nn.Module, adapter: EncoderAdapter, bug: np.ndarray,
                 reference: np.ndarray, mode: str = "kmeans", seed: int = 0,
                 score: str = "self") -> TextTrigger:
    """The reversed text trigger of one bug sentence (token occlusion + selection)."""
    words = str(bug).split()
    if not words:
        raise ValueError("the bug sentence has no words")
    scores = word_occlusion_scores(encoder, adapter, bug, reference, score)
    chosen = select_trigger_words(scores, mode, seed)
    return TextTrigger(tuple(w for w, keep in zip(words, chosen, strict=True) if keep))
