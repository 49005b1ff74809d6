"""Intake: turn a bug report into an accepted bug, or reject it with its reason.

For each report: reproduce the misclassification with the deployed encoder and
head, pick a reference input (same true label, classified correctly, nearest its
class centroid), reverse-engineer the trigger, and verify that the trigger behaves
like a backdoor's (mudjack.intake.verify); otherwise reject it as "not a backdoor" with
the measured numbers. The `auto` reversal asks the same verification of its candidates, so
that it settles on one that is a backdoor's trigger rather than one that merely flips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mudjack.bugs import Bug
from mudjack.config import Device, Params
from mudjack.data import RowView, Task, iter_batches
from mudjack.deployed import Deployed
from mudjack.device import select_device
from mudjack.features import extract_features, nearest_to_centroid
from mudjack.heads import predict
from mudjack.intake.phrase import RunSearch, Score, sample_sentences
from mudjack.intake.reverse import ReverseParams, recover
from mudjack.intake.verify import (
    Verification,
    VerifyParams,
    draw_controls,
    draw_sample,
    draw_strangers,
    verify_trigger,
)
from mudjack.io import sha256_bytes
from mudjack.reports import BugReport
from mudjack.triggers import TextTrigger, Trigger, trigger_correlation, trigger_coverage, trigger_iou
from mudjack.truth import Truth, truth_for


class IntakeParams(Params):
    """The `intake` section of params.yaml: trigger reversal and backdoor verification."""

    reverse: ReverseParams = ReverseParams()
    verify: VerifyParams = VerifyParams()
    # auto: the encoder runs on CUDA when there is one (mudjack.features.placed); intake's own
    # tensors, the heads and the decision's arithmetic stay on the CPU
    device: Device = "auto"


@dataclass
class Decision:
    report_id: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    merged_into: str | None = None  # a duplicate: the earlier report with the same content

    @property
    def outcome(self) -> str:
        if self.merged_into is not None:
            return "merged"
        return "accepted" if self.accepted else "rejected"

    def to_record(self) -> dict[str, Any]:
        merged = {"merged_into": self.merged_into} if self.merged_into is not None else {}
        return {"report_id": self.report_id, "decision": self.outcome, "reasons": self.reasons,
                **merged, **self.numbers}


def pick_reference(deployed: Deployed, task: Task, label: int, exclude_sha: str) -> int:
    """Index in task.train of a clean input of `label` the deployed model gets right."""
    candidates = np.flatnonzero(task.train.y == label)
    hashes = [sha256_bytes(row.tobytes()) for rows in iter_batches(RowView(task.train.x, candidates), 256)
              for row in rows]
    candidates = candidates[np.array([h != exclude_sha for h in hashes], dtype=bool)]
    if len(candidates) == 0:
        return -1
    # one feature pass serves the classification and the centroid (classify would make its own)
    features = extract_features(deployed.encoder, deployed.adapter, RowView(task.train.x, candidates))
    correct = predict(deployed.heads[task.name], features) == label
    if not correct.any():
        return -1
    return int(candidates[correct][nearest_to_centroid(features[torch.from_numpy(correct)])])


def _check_report(report: BugReport, deployed: Deployed, tasks: dict[str, Task]) -> tuple[str, str] | None:
    """(error code, reason) when the report does not fit a deployed task, else None."""
    if report.task not in tasks:
        return "unknown_task", f"unknown task {report.task!r}"
    if report.task not in deployed.heads:
        left_out = deployed.left_out.get(report.task)
        why = f" (left out: {left_out})" if left_out else ""
        return "unknown_task", f"no deployed head for task {report.task!r}{why}"
    task = tasks[report.task]
    if report.label not in task.classes:
        return "bad_label", f"label {report.label} is not a class of task {report.task!r}"
    if report.image.shape != task.input_shape:
        return "bad_shape", f"input shape {report.image.shape} differs from the task's {task.input_shape}"
    return None


# the log's numbers a bug's record.json leaves out: the fields it has, and timings (which would
# make the registry differ from run to run)
NOT_RECORDED = ("task", "label", "predicted", "phase_seconds")


def _reject(report: BugReport, code: str, reason: str, numbers: dict[str, Any] | None = None) -> Decision:
    return Decision(report.id, False, [reason], {**(numbers or {}), "error": code})


def _reproduce(report: BugReport, predicted: int) -> str | None:
    """Why the report does not reproduce, or None when it does."""
    if predicted == report.label:
        return f"does not reproduce: the deployed classifier predicts the true label {predicted}"
    if report.predicted is not None and report.predicted != predicted:
        return (f"does not reproduce: the client saw class {report.predicted}, "
                f"the deployed classifier predicts {predicted}")
    return None


def intake_report(report: BugReport, deployed: Deployed, tasks: dict[str, Task], *,
                  params: IntakeParams, truth: Truth = None,
                  seed: int = 0) -> tuple[Decision, Bug | None]:
    """Reproduce, pick a reference, reverse and verify the trigger; reject with reasons otherwise.
    `truth` (evaluation only): what the reversed trigger is measured against (`truth_for`)."""
    if problem := _check_report(report, deployed, tasks):
        return _reject(report, *problem), None
    task = tasks[report.task]
    # the same features, faster: BatchNorms folded, the network on a GPU when there is one
    deployed = deployed.for_inference(select_device(params.device))
    predicted = int(deployed.classify(task.name, report.image[None])[0])
    numbers: dict[str, Any] = {"task": task.name, "label": report.label, "predicted": predicted,
                               "sha256": report.sha256}
    if reason := _reproduce(report, predicted):
        return _reject(report, "not_reproduced", reason, numbers), None
    ref_index = pick_reference(deployed, task, report.label, report.sha256)
    if ref_index < 0:
        reason = f"no correctly classified clean input of class {report.label} to use as reference"
        return _reject(report, "no_reference", reason, numbers), None
    reference = task.train.x[ref_index]
    checks = params.verify
    held_out, pool = _split_clean(task, predicted, checks, seed)
    reversal: dict[str, Any] = {}  # the settings used and what the method measured
    clean, score = RowView(task.train.x, pool), deployed.log_prob(task.name, predicted)
    search = _run_search(deployed, clean, score, params, seed)
    verdict = _Verifier(report, deployed, task, predicted, reference=reference, checks=checks,
                        held_out=held_out, seed=seed, search=search)
    start = time.perf_counter()
    recovery = recover(deployed.encoder, deployed.adapter, report.image, reference,
                       params=params.reverse, seed=seed, clean=clean,
                       flip_rate=deployed.flip_rate(task.name, predicted), score=score,
                       accept=verdict.passes if checks.enabled else None, record=reversal)
    # the log's phase_seconds: where a report's time goes (kept out of the bug's record.json)
    numbers["phase_seconds"] = {"reversal": round(time.perf_counter() - start - verdict.seconds, 3)}
    trigger, truth = recovery.trigger, truth_for(truth, task.name, predicted)
    numbers.update(reference_index=ref_index, mask_pixels=trigger.pixels, reversal=reversal,
                   **_truth_numbers(trigger, truth))
    if isinstance(trigger, TextTrigger):  # what a reader of the log wants to see; pixels are in arrays.npz
        numbers["trigger_words"] = list(trigger.words)
    if recovery.alternates:
        numbers["alternates_truth"] = [_truth_numbers(t, truth) for t in recovery.alternates]
    reasons = ["reproduced; trigger reverse-engineered"]
    if checks.enabled:
        verification = verdict(trigger)
        numbers["verification"] = verification.numbers
        numbers["phase_seconds"] |= {"verification": round(verdict.seconds, 3), "verified": len(verdict.seen)}
        if not verification.passed:
            reason = "not a backdoor: " + "; ".join(verification.failures)
            return _reject(report, "not_backdoor", reason, numbers), None
        reasons.append("verified: the trigger flips and pulls other classes' inputs")
    bug = Bug(report.id, task.name, report.label, predicted, report.image, reference, trigger,
              record={k: v for k, v in numbers.items() if k not in NOT_RECORDED},
              alternates=recovery.alternates)
    return Decision(report.id, True, reasons, numbers), bug


def _truth_numbers(trigger: Trigger | TextTrigger, truth: Trigger | TextTrigger | None) -> dict[str, Any]:
    """How the reversed trigger matches the true one, when the scenario knows it."""
    if truth is None:
        return {"iou": None}
    numbers = {"iou": trigger_iou(trigger, truth)}
    if not isinstance(truth, TextTrigger):
        numbers["coverage"] = trigger_coverage(trigger, truth)
        numbers["correlation"] = trigger_correlation(trigger, truth)  # what tells a blend
    return numbers


def _run_search(deployed: Deployed, clean: RowView, score: Score, params: IntakeParams,
                seed: int) -> RunSearch | None:
    """For text: the phrase search's sentences and score, where verification's controls are
    chosen as the trigger was (phrase.strongest_runs)."""
    if deployed.adapter.modality != "text" or len(clean) == 0:
        return None
    phrase = params.reverse.phrase
    return RunSearch(sample_sentences(clean, phrase.samples, seed), score, seed, budget=phrase.control_runs)


def _split_clean(task: Task, predicted: int, checks: VerifyParams,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train indices of other classes: (held out for verification, the rest for reversal)."""
    others = np.flatnonzero(task.train.y != predicted)  # clean inputs the trigger should pull
    if not checks.enabled:
        return others[:0], others
    held_out = draw_sample(task, predicted, checks.samples, seed)
    rest = np.setdiff1d(others, held_out)
    return held_out, rest if len(rest) else others


class _Verifier:
    """The backdoor verification of one report's candidate triggers, each measured once (auto
    reversal asks while it searches; the decision asks again for the chosen trigger)."""

    def __init__(self, report: BugReport, deployed: Deployed, task: Task, predicted: int, *,
                 reference: np.ndarray | str, checks: VerifyParams, held_out: np.ndarray,
                 seed: int, search: RunSearch | None = None) -> None:
        self.report, self.deployed, self.task, self.predicted = report, deployed, task, predicted
        self.search = search  # text: where the controls' strongest runs are measured
        self.reference = reference
        self.checks, self.held_out, self.seed = checks, held_out, seed
        self.exemplars: np.ndarray | None = None  # the controls' fills, drawn on first use
        self.strangers: np.ndarray | None = None  # the key check's fills (train indices), likewise
        self.seen: list[tuple[Trigger | TextTrigger, Verification]] = []  # by identity
        self.seconds = 0.0  # spent verifying, over every trigger asked about

    def __call__(self, trigger: Trigger | TextTrigger) -> Verification:
        for seen, verification in self.seen:
            if seen is trigger:
                return verification
        start = time.perf_counter()
        if self.exemplars is None:
            fills = draw_controls(self.deployed, self.task, self.predicted, size=self.checks.controls,
                                  seed=self.seed, exclude_sha=self.report.sha256)
            self.exemplars = self.task.train.x[fills]
            self.strangers = draw_strangers(self.task, self.predicted, size=self.checks.controls,
                                            seed=self.seed, exclude=self.held_out)
        verification = verify_trigger(self.deployed, self.task, self.report.image, self.predicted, trigger,
                                      label=self.report.label, reference=self.reference,
                                      exemplars=self.exemplars, sample=self.held_out, params=self.checks,
                                      strangers=self.strangers, search=self.search)
        self.seen.append((trigger, verification))
        self.seconds += time.perf_counter() - start
        return verification

    def passes(self, trigger: Trigger) -> bool:
        return self(trigger).passed
