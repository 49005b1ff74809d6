"""Intake: turn a bug report into an accepted bug, or reject it with its reason.

For each report: reproduce the misclassification with the deployed encoder and
head, pick a reference input (same true label, classified correctly, nearest its
class centroid), reverse-engineer the trigger, and verify that the trigger behaves
like a backdoor's (mudjack.intake.verify); otherwise reject it as "not a backdoor" with
the measured numbers. The `auto` reversal asks the same verification of its candidates, so
that it settles on one that is a backdoor's trigger rather than one that merely flips.
"""

from __future__ import annotations

import dataclasses
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
from mudjack.intake.reverse import Recovery, ReverseParams, recover
from mudjack.intake.verify import (
    Verification,
    VerifyParams,
    draw_controls,
    draw_sample,
    draw_strangers,
    verify_trigger,
)
from mudjack.intake.warp_check import WARP, warp_fallback
from mudjack.io import sha256_bytes
from mudjack.reports import BugReport
from mudjack.triggers import (
    TextTrigger,
    Trigger,
    flow_cosine,
    trigger_correlation,
    trigger_coverage,
    trigger_iou,
)
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


MIN_SOURCE_SAMPLES = 10  # held out, and as many to reverse on: a class with fewer has no source pass
# Moving one class's inputs to another takes far less than moving every class's, so a fit over
# most of the image passes one class's null for an ordinary error (digits forgery bench: a
# 64-pixel fit to a genuine error, z 5.7); the source pass takes local triggers only.
SPREAD_ON_ONE_CLASS = ("over more than half of the image, a trigger verified on one class's inputs "
                       "is not evidence of a backdoor: an image-wide perturbation moves one class easily")

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
    attempt = _attempt(report, deployed, task, predicted, ref_index, params=params, seed=seed)
    if _source_pass_due(attempt, deployed, params):
        attempt = _source_pass(report, deployed, task, predicted, ref_index, attempt,
                               params=params, seed=seed, numbers=numbers)
    # the log's phase_seconds: where a report's time goes (kept out of the bug's record.json)
    numbers["phase_seconds"] = {"reversal": round(attempt.reversal_seconds, 3)}
    recovery, truth = attempt.recovery, truth_for(truth, task.name, predicted)
    trigger = recovery.trigger
    numbers.update(reference_index=ref_index, mask_pixels=trigger.pixels, reversal=attempt.reversal,
                   **_truth_numbers(trigger, truth))
    if isinstance(trigger, TextTrigger):  # what a reader of the log wants to see; pixels are in arrays.npz
        numbers["trigger_words"] = list(trigger.words)
    if recovery.alternates:
        numbers["alternates_truth"] = [_truth_numbers(t, truth) for t in recovery.alternates]
    reasons = ["reproduced; trigger reverse-engineered"]
    if (verification := attempt.verification) is not None:
        numbers["verification"] = verification.numbers
        numbers["phase_seconds"] |= {"verification": round(attempt.verification_seconds, 3),
                                     "verified": attempt.verified}
        if not verification.passed:
            reason = "not a backdoor: " + "; ".join(verification.failures)
            if "source_pass" in numbers:
                reason += (f"; nor on inputs of its own class {report.label} alone (a source-specific "
                           f"backdoor): " + "; ".join(numbers["source_pass"]["failures"]))
            return _reject(report, "not_backdoor", reason, numbers), None
        reasons.append(_verified_reason(numbers, report.label))
    bug = Bug(report.id, task.name, report.label, predicted, report.image, task.train.x[ref_index], trigger,
              record={k: v for k, v in numbers.items() if k not in NOT_RECORDED},
              alternates=recovery.alternates)
    return Decision(report.id, True, reasons, numbers), bug


@dataclass
class _Attempt:
    """One search for a report's trigger over one pool of clean inputs, and its verdict."""

    recovery: Recovery
    reversal: dict[str, Any]  # the settings used and what the method measured
    verification: Verification | None  # None: verification is off
    reversal_seconds: float
    verification_seconds: float
    verified: int  # candidates verified


def _attempt(report: BugReport, deployed: Deployed, task: Task, predicted: int, ref_index: int, *,
             params: IntakeParams, seed: int, source: int | None = None) -> _Attempt:
    """Reverse the trigger on clean inputs of the classes other than `predicted` (or, with
    `source`, of that class alone) and verify it on inputs of the same kind held out."""
    checks, reference = params.verify, task.train.x[ref_index]
    if source is None:
        held_out, pool = _split_clean(task, predicted, checks, seed)
    else:
        held_out, pool = _split_source(_own_inputs(task, source, ref_index), checks, seed)
    clean, score = RowView(task.train.x, pool), deployed.log_prob(task.name, predicted)
    search = _run_search(deployed, clean, score, params, seed)
    verdict = _Verifier(report, deployed, task, predicted, reference=reference, checks=checks,
                        held_out=held_out, seed=seed, search=search, local=source is not None)
    reversal: dict[str, Any] = {}
    start = time.perf_counter()
    recovery = recover(deployed.encoder, deployed.adapter, report.image, reference,
                       params=params.reverse, seed=seed, clean=clean,
                       flip_rate=deployed.flip_rate(task.name, predicted), score=score,
                       accept=verdict.passes if checks.enabled else None, record=reversal)
    reversal_seconds = time.perf_counter() - start - verdict.seconds
    verification = verdict(recovery.trigger) if checks.enabled else None
    seconds = verdict.seconds
    if (verification is not None and not verification.passed and recovery.warp is not None
            and checks.warp and source is None):
        start = time.perf_counter()
        recovery, verification = warp_fallback(
            deployed, task, report.image, predicted, recovery, verification, sample=held_out, pool=pool,
            params=checks, fit=params.reverse.warp, seed=seed, exclude_sha=report.sha256, reversal=reversal)
        seconds += time.perf_counter() - start
    return _Attempt(recovery, reversal, verification, reversal_seconds, seconds, len(verdict.seen))


def _own_inputs(task: Task, source: int, ref_index: int) -> np.ndarray:
    """Train indices of class `source`, the reference left out."""
    return np.setdiff1d(np.flatnonzero(task.train.y == source), [ref_index])


def _split_source(own: np.ndarray, checks: VerifyParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`own` (train indices of one class): (held out for verification, the rest for reversal),
    at most half of them held out."""
    held_out = np.random.default_rng(seed).choice(own, min(checks.samples, len(own) // 2), replace=False)
    return np.sort(held_out), np.setdiff1d(own, held_out)


def _source_pass_due(attempt: _Attempt, deployed: Deployed, params: IntakeParams) -> bool:
    """Whether a trigger refused on other classes' inputs is looked for again on the report's
    own class alone (image encoders)."""
    return (attempt.verification is not None and not attempt.verification.passed
            and params.verify.source and deployed.adapter.modality == "image")


def _source_pass(report: BugReport, deployed: Deployed, task: Task, predicted: int, ref_index: int,
                 first: _Attempt, *, params: IntakeParams, seed: int, numbers: dict[str, Any]) -> _Attempt:
    """A source-specific backdoor fires only on inputs of one class, so stamped on other
    classes' inputs its trigger moves few of them: the search again, on inputs of the reported
    label alone. The attempt the decision rests on (this one when it passes), the other's
    numbers kept in `numbers`."""
    own = len(_own_inputs(task, report.label, ref_index))
    if own < 2 * MIN_SOURCE_SAMPLES:
        numbers["source_pass"] = {"class": report.label, "passed": False, "failures": [
            f"{own} clean train inputs of class {report.label}, fewer than {2 * MIN_SOURCE_SAMPLES}"]}
        return first
    second = _attempt(report, deployed, task, predicted, ref_index, params=params, seed=seed,
                      source=report.label)
    assert second.verification is not None and first.verification is not None
    passed = second.verification.passed
    chosen, aside = (second, first) if passed else (first, second)
    numbers["source_pass"] = {"class": report.label, "passed": passed,
                              "failures": aside.verification.failures,
                              "reversal": aside.reversal, "verification": aside.verification.numbers}
    return dataclasses.replace(chosen, reversal_seconds=first.reversal_seconds + second.reversal_seconds,
                               verification_seconds=first.verification_seconds + second.verification_seconds,
                               verified=first.verified + second.verified)


def _verified_reason(numbers: dict[str, Any], label: int) -> str:
    if numbers["verification"].get("model") == WARP:
        return ("verified as a warp (a smooth displacement field): it flips other classes' inputs far "
                "more than warps fitted to other classes flip them to theirs; the mask trigger was refused: "
                + "; ".join(numbers["verification"]["refused_trigger"]["failures"]))
    if numbers.get("source_pass", {}).get("passed"):
        return (f"verified on inputs of its own class {label} only (a source-specific backdoor): the trigger "
                f"flips and pulls them; on other classes' inputs: "
                + "; ".join(numbers["source_pass"]["failures"]))
    return "verified: the trigger flips and pulls other classes' inputs"


def _truth_numbers(trigger: Trigger | TextTrigger, truth: Trigger | TextTrigger | None) -> dict[str, Any]:
    """How the reversed trigger matches the true one, when the scenario knows it."""
    if truth is None:
        return {"iou": None}
    numbers = {"iou": trigger_iou(trigger, truth)}
    if not isinstance(truth, TextTrigger):
        numbers["coverage"] = trigger_coverage(trigger, truth)
        numbers["correlation"] = trigger_correlation(trigger, truth)  # what tells a blend
        if truth.warps:  # what tells a warp: neither mask nor pattern says anything of it
            numbers["flow_cosine"] = flow_cosine(trigger, truth)
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
                 seed: int, search: RunSearch | None = None, local: bool = False) -> None:
        self.report, self.deployed, self.task, self.predicted = report, deployed, task, predicted
        self.local = local  # only triggers on at most half of the image can pass (the source pass)
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
        if self.local and isinstance(trigger, Trigger) and trigger.spread and verification.passed:
            verification = dataclasses.replace(verification, passed=False, failures=[SPREAD_ON_ONE_CLASS])
        self.seen.append((trigger, verification))
        self.seconds += time.perf_counter() - start
        return verification

    def passes(self, trigger: Trigger) -> bool:
        return self(trigger).passed
