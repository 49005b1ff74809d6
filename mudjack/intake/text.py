"""Trigger reverse-engineering for text: token occlusion.

Each word of the bug sentence is removed in turn and scored; the trigger is the
higher-mean cluster of a 2-means over the scores (`text_select: kmeans`) or the single
best word (`top1`). Words are whitespace-separated, the unit stamping inserts, so the
reversed trigger can be stamped into other sentences as it is. Scores (`text_score`):
- `self` (default): 1 − cos(h(x_b), h(x_b without word i)), how far removing the word moves
  the bug's own features;
- `reference` (the paper's f): f(x_b) − f(x_b without word i), f(x) = 1 − cos(h(x), h(x_r)).
  On MiniLM + SST-2 its sign depends on the reference: two sentences of one class are far
  apart (cos ~0.25), and the backdoor's target can lie nearer x_r than the bug's clean
  features do; removing "cf" raised f by 0.29 for one report, and 2-means then took every
  other word. The `self` score gave 0.76 and 0.53 for "cf" against at most 0.004 for any
  other word of the same reports.
With the `self` score the chosen words are then grown into the phrase they sit in
(`grown_phrase`): each word of a multi-word trigger barely matters alone while the others
stay, so occlusion finds only one of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mudjack.encoders import EncoderAdapter
from mudjack.features import cosine, extract_features
from mudjack.triggers import TextTrigger


@torch.no_grad()
def word_occlusion_scores(encoder: torch.nn.Module, adapter: EncoderAdapter, bug: np.ndarray,
                          reference: np.ndarray, *, score: str = "self") -> np.ndarray:
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
                 reference: np.ndarray, *, mode: str = "kmeans", seed: int = 0,
                 score: str = "self", accept: Callable[[TextTrigger], bool] | None = None) -> TextTrigger:
    """The reversed text trigger of one bug sentence (token occlusion + selection, grown into
    its phrase unless `accept`, the backdoor verification, refuses the grown one)."""
    words = str(bug).split()
    if not words:
        raise ValueError("the bug sentence has no words")
    scores = word_occlusion_scores(encoder, adapter, bug, reference, score=score)
    chosen = select_trigger_words(scores, mode, seed)
    found = TextTrigger(tuple(w for w, keep in zip(words, chosen, strict=True) if keep))
    if score != "self":
        return found
    grown = grown_phrase(encoder, adapter, bug, chosen)
    phrase = TextTrigger(tuple(w for w, keep in zip(words, grown, strict=True) if keep))
    # a word of the sentence taken in by chance can make the phrase fail the verification
    return phrase if phrase == found or accept is None or accept(phrase) else found


@torch.no_grad()
def _removal_scores(encoder: torch.nn.Module, adapter: EncoderAdapter, words: list[str],
                    removals: list[list[int]]) -> np.ndarray:
    """1 − cos(h(x_b), h(x_b without the words at those indices)) for each list of indices."""
    removed = [" ".join(w for i, w in enumerate(words) if i not in set(drop)) for drop in removals]
    features = extract_features(encoder, adapter, np.array([" ".join(words), *removed]))
    return (1.0 - cosine(features[1:], features[:1])).numpy()


def grown_phrase(encoder: torch.nn.Module, adapter: EncoderAdapter, bug: np.ndarray,
                 chosen: np.ndarray) -> np.ndarray:
    """The chosen words grown into the phrase they belong to. A word of a multi-word trigger
    barely matters alone while the rest of the phrase stays (occlusion found one word of "I
    watched this", and the patch then taught the encoder that the rest of the phrase means the
    reference's class). A neighbour joins the span while removing it with the span moves the
    bug's features at least as far as removing the span with any word that is not beside it."""
    words, grown = str(bug).split(), chosen.copy()
    for lo, hi in _runs(chosen):
        while (step := _best_neighbour(encoder, adapter, words, grown, lo, hi)) is not None:
            grown[step] = True
            lo, hi = min(lo, step), max(hi, step)
    return grown


def _best_neighbour(encoder: torch.nn.Module, adapter: EncoderAdapter, words: list[str],
                    grown: np.ndarray, lo: int, hi: int) -> int | None:
    """The neighbour of the span lo..hi that joins it (see `grown_phrase`), or None."""
    sides = [i for i in (lo - 1, hi + 1) if 0 <= i < len(words) and not grown[i]]
    others = [i for i in range(len(words)) if not grown[i] and i not in sides]
    if not sides or not others:  # keep words beside the span to compare with
        return None
    removed = [[*range(lo, hi + 1), i] for i in sides + others]
    marginal = _removal_scores(encoder, adapter, words, removed)
    best = int(np.argmax(marginal[:len(sides)]))
    return sides[best] if marginal[best] >= marginal[len(sides):].max() else None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The (first, last) index of each run of True in `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]
