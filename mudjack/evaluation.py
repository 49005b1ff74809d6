"""Retrain a downstream head on an encoder and measure clean accuracy, ASR and TBA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mudjack.data import Task, iter_batches
from mudjack.encoders import EncoderAdapter
from mudjack.exposure import Predictor
from mudjack.features import extract_features
from mudjack.heads import Head, HeadParams, predict, train_head
from mudjack.metrics import clean_accuracy, evaluate, non_target
from mudjack.triggers import Trigger


@dataclass
class AttackSpec:
    """How a task is attacked in evaluation: the trigger and the target class."""

    trigger: Trigger
    target: int
    source: str  # "truth" (known trigger) or "reversed" (from an accepted bug)


def retrain_head(encoder: nn.Module, adapter: EncoderAdapter, task: Task, params: HeadParams,
                 *, seed: int = 0) -> Head:
    """A fresh head trained on the frozen encoder's features of the task's train set."""
    return retrain_heads(encoder, adapter, task, params, seeds=[seed])[0]


def retrain_heads(encoder: nn.Module, adapter: EncoderAdapter, task: Task, params: HeadParams,
                  *, seeds: Sequence[int]) -> list[Head]:
    """One fresh head per seed on the same features (extracted once)."""
    features = extract_features(encoder, adapter, task.train.x)
    return [train_head(features, task.train.y, len(task.classes), params, seed=seed) for seed in seeds]


def predictor(encoder: nn.Module, adapter: EncoderAdapter, heads: Head | Sequence[Head]) -> Predictor:
    """The downstream classifier (encoder + head) as raw inputs -> predicted classes; with
    several heads, one row of predictions per head, the features computed once."""
    if isinstance(heads, Head):
        return lambda raw: predict(heads, extract_features(encoder, adapter, raw))
    if not heads:
        raise ValueError("a predictor needs at least one head")

    def classify(raw: np.ndarray) -> np.ndarray:
        features = extract_features(encoder, adapter, raw)
        return np.stack([predict(head, features) for head in heads])
    return classify


def retrain_and_evaluate(encoder: nn.Module, adapter: EncoderAdapter, task: Task,
                         attack: AttackSpec | None, params: HeadParams,
                         *, seed: int = 0, heads: int = 1) -> tuple[Head, dict[str, Any]]:
    """Train `heads` fresh heads (seeds seed, seed + 1, ...) on the frozen encoder's features;
    metrics on the task's test set for one known attack, averaged over the heads as the retrain
    stage's are (mudjack.exposure measures every trigger on every task). Returns the first head."""
    trained = retrain_heads(encoder, adapter, task, params, seeds=range(seed, seed + heads))
    return trained[0], evaluate_heads(encoder, adapter, trained, task, attack)


def evaluate_head(encoder: nn.Module, adapter: EncoderAdapter, head: Head, task: Task,
                  attack: AttackSpec | None) -> dict[str, Any]:
    """Clean accuracy, and with an attack its ASR, TBA, target_tba and anti_flip (the target
    class's own inputs with the trigger: an anti-trigger shows there), of encoder + head on the
    test set."""
    return evaluate_heads(encoder, adapter, [head], task, attack)


def evaluate_heads(encoder: nn.Module, adapter: EncoderAdapter, heads: Sequence[Head], task: Task,
                   attack: AttackSpec | None) -> dict[str, Any]:
    """`evaluate_head`'s metrics, each the mean over the heads (one feature pass for them all);
    with several heads, `per_head` holds each head's."""
    clean = predictor(encoder, adapter, heads)(task.test.x)
    if attack is None:
        rows = [{"clean_acc": clean_accuracy(row, task.test.y), "asr": None, "tba": None} for row in clean]
    else:
        stamped = stamped_features(encoder, adapter, task.test.x, attack.trigger)  # every class at once
        rows = [_attack_row(row, predict(head, stamped), task.test.y, attack.target)
                for head, row in zip(heads, clean, strict=True)]
    if len(rows) == 1:
        return rows[0]
    return {**{key: _mean([row[key] for row in rows]) for key in rows[0]},
            "per_head": {key: [row[key] for row in rows] for key in rows[0]}}


def _attack_row(clean: np.ndarray, triggered: np.ndarray, labels: np.ndarray, target: int) -> dict[str, Any]:
    """`evaluate`'s metrics from one head's predictions on every test input, clean and stamped
    (target_tba and anti_flip only when the target class has test inputs)."""
    others = non_target(labels, target)
    return evaluate(clean, labels, triggered[others], target=target,
                    target_triggered=triggered[~others] if (~others).any() else None)


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else float(np.mean(values))


def stamped_features(encoder: nn.Module, adapter: EncoderAdapter, raw: np.ndarray, trigger: Trigger,
                     *, batch_size: int = 512) -> torch.Tensor:
    """Features of `raw` with the trigger stamped, stamped batch by batch (a set may be mapped)."""
    chunks = [extract_features(encoder, adapter, adapter.stamp(rows, trigger), batch_size=batch_size)
              for rows in iter_batches(raw, batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, adapter.feature_dim)
