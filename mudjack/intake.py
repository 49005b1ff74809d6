"""Intake: turn a bug report into an accepted bug, or reject it with its reason.

For each report: reproduce the misclassification with the deployed encoder and
head, pick a reference input (same true label, classified correctly, nearest its
class centroid), and reverse-engineer the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mudjack.bugs import Bug
from mudjack.data import Task
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import extract_features, nearest_to_centroid
from mudjack.heads import Head, predict
from mudjack.io import sha256_bytes
from mudjack.reports import BugReport
from mudjack.reverse import ReverseParams, reverse_engineer
from mudjack.triggers import Trigger, iou


@dataclass
class Decision:
    report_id: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"report_id": self.report_id, "decision": "accepted" if self.accepted else "rejected",
                "reasons": self.reasons, **self.numbers}


@dataclass
class Deployed:
    """What the provider runs: the backdoored encoder and each task's head."""

    encoder: ImageEncoder
    adapter: EncoderAdapter
    heads: dict[str, Head]

    def classify(self, task: str, images: np.ndarray) -> np.ndarray:
        return predict(self.heads[task], extract_features(self.encoder, self.adapter, images))


def pick_reference(deployed: Deployed, task: Task, label: int, exclude_sha: str) -> int:
    """Index in task.train of a clean input of `label` the deployed model gets right."""
    candidates = np.flatnonzero(task.train.y == label)
    candidates = [i for i in candidates if sha256_bytes(task.train.x[i].tobytes()) != exclude_sha]
    candidates = np.asarray(candidates, dtype=int)
    if len(candidates) == 0:
        return -1
    correct = candidates[deployed.classify(task.name, task.train.x[candidates]) == label]
    if len(correct) == 0:
        return -1
    features = extract_features(deployed.encoder, deployed.adapter, task.train.x[correct])
    return int(correct[nearest_to_centroid(features)])


def _check_report(report: BugReport, deployed: Deployed, tasks: dict[str, Task]) -> list[str]:
    if report.task not in tasks:
        return [f"unknown task {report.task!r}"]
    if report.task not in deployed.heads:
        return [f"no deployed head for task {report.task!r}"]
    task = tasks[report.task]
    if report.label not in task.classes:
        return [f"label {report.label} is not a class of task {report.task!r}"]
    if report.image.shape != task.input_shape:
        return [f"input shape {report.image.shape} differs from the task's {task.input_shape}"]
    return []


def intake_report(report: BugReport, deployed: Deployed, tasks: dict[str, Task],
                  params: ReverseParams, truth: Trigger | None = None,
                  seed: int = 0) -> tuple[Decision, Bug | None]:
    """Reproduce, pick a reference, reverse the trigger; reject with reasons otherwise."""
    problems = _check_report(report, deployed, tasks)
    if problems:
        return Decision(report.id, False, problems), None
    task = tasks[report.task]
    predicted = int(deployed.classify(task.name, report.image[None])[0])
    numbers: dict[str, Any] = {"task": task.name, "label": report.label, "predicted": predicted,
                               "sha256": report.sha256}
    if predicted == report.label:
        reason = f"does not reproduce: the deployed classifier predicts the true label {predicted}"
        return Decision(report.id, False, [reason], numbers), None
    ref_index = pick_reference(deployed, task, report.label, report.sha256)
    if ref_index < 0:
        reason = f"no correctly classified clean input of class {report.label} to use as reference"
        return Decision(report.id, False, [reason], numbers), None
    reference = task.train.x[ref_index]
    with torch.no_grad():
        trigger = reverse_engineer(deployed.encoder, deployed.adapter, report.image, reference,
                                   params, seed)
    numbers.update(reference_index=ref_index, mask_pixels=trigger.pixels,
                   iou=iou(trigger.mask, truth.mask) if truth is not None else None)
    bug = Bug(report.id, task.name, report.label, predicted, report.image, reference, trigger,
              record={k: v for k, v in numbers.items() if k not in ("task", "label", "predicted")})
    return Decision(report.id, True, ["reproduced; trigger reverse-engineered"], numbers), bug
