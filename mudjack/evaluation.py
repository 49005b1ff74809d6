"""Retrain a downstream head on an encoder and measure clean accuracy, ASR and TBA."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mudjack.bugs import Bug
from mudjack.data import RowView, Task, iter_batches
from mudjack.encoders import EncoderAdapter
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


def attack_spec(task: str, bugs: list[Bug], *, truth: Trigger | None,
                targets: dict[str, int]) -> AttackSpec | None:
    """The known trigger and target when given, else the first bug's reversed trigger and the
    class its bugs were most often misclassified as; None when nothing is known."""
    if truth is not None and task in targets:
        return AttackSpec(truth, targets[task], "truth")
    task_bugs = [b for b in bugs if b.task == task]
    if not task_bugs:
        return None
    predicted = np.bincount([b.predicted for b in task_bugs])
    return AttackSpec(task_bugs[0].trigger, int(predicted.argmax()), "reversed")


def retrain_and_evaluate(encoder: nn.Module, adapter: EncoderAdapter, task: Task,
                         attack: AttackSpec | None, params: HeadParams,
                         *, seed: int = 0) -> tuple[Head, dict[str, float | None]]:
    """Train a fresh head on the frozen encoder's features; metrics on the task's test set."""
    head = train_head(extract_features(encoder, adapter, task.train.x), task.train.y,
                      len(task.classes), params, seed=seed)
    clean_pred = predict(head, extract_features(encoder, adapter, task.test.x))
    if attack is None:
        return head, {"clean_acc": clean_accuracy(clean_pred, task.test.y), "asr": None, "tba": None}
    kept = RowView(task.test.x, non_target(task.test.y, attack.target))
    triggered = stamped_features(encoder, adapter, kept, attack.trigger)
    return head, evaluate(clean_pred, task.test.y, predict(head, triggered), target=attack.target)


def stamped_features(encoder: nn.Module, adapter: EncoderAdapter, raw: np.ndarray, trigger: Trigger,
                     *, batch_size: int = 512) -> torch.Tensor:
    """Features of `raw` with the trigger stamped, stamped batch by batch (a set may be mapped)."""
    chunks = [extract_features(encoder, adapter, adapter.stamp(rows, trigger), batch_size=batch_size)
              for rows in iter_batches(raw, batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, adapter.feature_dim)
