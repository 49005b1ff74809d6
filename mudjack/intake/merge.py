"""Deciding an inbox: one decision per report file, duplicates merged into their first report.

Decisions are keyed by report file (validate's verdicts too). A report with the same content
hash (task, label, input) as an earlier one is merged into it: it gets the first report's
outcome and is listed in the accepted bug's record, not reversed again. Ids and inputs are
claimed in file order (`mudjack.reports.Claims`): a later report with a taken id is
`duplicate_id`, one giving a known input another label `conflicting_label`. A report that
breaks intake is rejected with the error, never fatal to the others.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from mudjack.bugs import Bug
from mudjack.data import Task, in_input_space
from mudjack.deployed import Deployed
from mudjack.device import select_device
from mudjack.intake.decision import Decision, IntakeParams, intake_report
from mudjack.reports import BugReport, Claims, ReportError, read_report, report_stem
from mudjack.truth import Truth


class Intake:
    """Decides reports one by one, remembering content hashes to merge duplicates."""

    def __init__(self, deployed: Deployed, tasks: dict[str, Task], *, params: IntakeParams, seed: int = 0,
                 truth: Truth = None,
                 validation: dict[str, Any] | None = None) -> None:
        """`validation`: the `reports` verdicts of validation.json (rejected and codes by file)."""
        self.device = select_device(params.device)  # where the encoder runs (the summary says)
        # folded (and placed on a GPU when there is one) once per inbox; intake_report's call is then a no-op
        deployed = deployed.for_inference(self.device)
        adapter = deployed.adapter
        self.resize = adapter.resize_raw if adapter.resizes_inputs else None
        if self.resize is not None:  # tasks, reports and reversal all in the model's input space
            tasks = {name: in_input_space(task, adapter.input_shape, self.resize)
                     for name, task in tasks.items()}
        self.deployed, self.tasks, self.params, self.seed, self.truth = deployed, tasks, params, seed, truth
        self.rejected_by_validation: dict[str, list[str]] = (validation or {}).get("rejected", {})
        self.validation_codes: dict[str, str] = (validation or {}).get("codes", {})
        self.claims = Claims()
        self.first: dict[str, Decision] = {}  # content hash -> decision of its first report
        self.bugs: dict[str, Bug] = {}

    def decide(self, path: Path) -> Decision:
        """One report file -> one decision; never raises."""
        start = time.perf_counter()
        try:
            decision = self._decide(path)
        except Exception as err:  # a report that breaks intake is rejected, not fatal
            reason = f"intake failed: {type(err).__name__}: {err}"
            decision = Decision(report_stem(path.name), False, [reason], {"error": "internal"})
        decision.numbers.update(file=path.name, seconds=round(time.perf_counter() - start, 3))
        return decision

    def _decide(self, path: Path) -> Decision:
        failed_gx = self._validation_reasons(path)
        try:
            report = read_report(path, self.tasks, resize=self.resize)
        except ReportError as err:
            return Decision(report_stem(path.name), False, [f"invalid report: {err}", *failed_gx],
                            {"error": err.code})
        if failed_gx:
            code = self.validation_codes.get(path.name, "validation")
            return Decision(report.id, False, failed_gx, {"error": code})
        try:
            self.claims.claim(path.name, report.id, report.input_hash, report.label)
        except ReportError as err:
            return Decision(report.id, False, [str(err)], {"error": err.code})
        if report.content_hash in self.first:
            return self._merge(report)
        decision, bug = intake_report(report, self.deployed, self.tasks, params=self.params,
                                      truth=self.truth, seed=self.seed)
        self.first[report.content_hash] = decision
        if bug is not None:
            self.bugs[bug.id] = bug
        return decision

    def _validation_reasons(self, path: Path) -> list[str]:
        if path.name in self.rejected_by_validation:
            return ["failed validation: " + "; ".join(self.rejected_by_validation[path.name])]
        return []

    def _merge(self, report: BugReport) -> Decision:
        first = self.first[report.content_hash]
        if first.report_id in self.bugs:
            self.bugs[first.report_id].record.setdefault("merged", []).append(report.id)
        reason = f"duplicate of {first.report_id} (same task, label and input): merged into it"
        return Decision(report.id, first.accepted, [reason],
                        {"content_hash": report.content_hash, "first_decision": first.outcome},
                        merged_into=first.report_id)


def summary(decisions: list[Decision]) -> dict[str, Any]:
    """Counts per outcome and rejection code, and the accepted triggers' mean IoU (when known)."""
    outcomes = Counter(d.outcome for d in decisions)
    ious = [d.numbers["iou"] for d in decisions
            if d.outcome == "accepted" and d.numbers.get("iou") is not None]
    errors = Counter(d.numbers.get("error") for d in decisions if d.outcome == "rejected")
    return {"reports": len(decisions), "accepted": outcomes["accepted"],
            "rejected": outcomes["rejected"], "merged": outcomes["merged"],
            "rejected_by": dict(sorted(errors.items())),
            "mean_iou": sum(ious) / len(ious) if ious else None}
