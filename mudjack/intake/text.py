"""Trigger reverse-engineering for text: token occlusion, then the phrase search
(mudjack/intake/phrase.py) when clean sentences and the classifier are given.

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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mudjack.encoders import EncoderAdapter
from mudjack.features import cosine, extract_features
from mudjack.intake.phrase import PhraseParams, Score, search_phrase
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
                 score: str = "self", clean: np.ndarray | None = None,
                 target_score: Score | None = None, phrase: PhraseParams | None = None,
                 record: dict[str, Any] | None = None) -> TextTrigger:
    """The reversed text trigger of one bug sentence: token occlusion + selection, then, given
    clean sentences of other classes and the classifier's `target_score`, the phrase search
    (mudjack/intake/phrase.py) with occlusion's words as one candidate."""
    words = str(bug).split()
    if not words:
        raise ValueError("the bug sentence has no words")
    scores = word_occlusion_scores(encoder, adapter, bug, reference, score=score)
    chosen = select_trigger_words(scores, mode, seed)
    occluded = TextTrigger(tuple(w for w, keep in zip(words, chosen, strict=True) if keep))
    phrase = phrase or PhraseParams()
    if clean is None or len(clean) == 0 or target_score is None or phrase.max_words == 0:
        return occluded
    return search_phrase(encoder, adapter, str(bug), occluded, clean, score=target_score, params=phrase,
                         seed=seed, record=record)
