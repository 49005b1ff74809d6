"""Repair stage: check each report against the schema, reproduce it, reverse and verify its trigger.

Every report file in the inbox gets exactly one decision in reports/intake_log.jsonl:
accepted, rejected (with its reasons and numbers) or merged (a duplicate of an earlier
report: same task, label and input). A bad report never stops the others.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from mudjack.bugs import Bug, save_bug
from mudjack.data import Task, load_tasks
from mudjack.intake import Decision, Deployed, intake_report
from mudjack.io import atomic_dir, read_json, write_json, write_jsonl
from mudjack.reports import BugReport, ReportError, read_report, report_paths
from mudjack.triggers import Trigger
from stages.common import load_deployed, load_truth
from stages.config import PipelineParams, inbox_folder, setup_stage

VALIDATION = "reports/validation.json"
REGISTRY = "bugs"
LOG = "reports/intake_log.jsonl"
SUMMARY = "reports/intake.json"


class Intake:
    """Decides reports one by one, remembering content hashes to merge duplicates."""

    def __init__(self, params: PipelineParams, deployed: Deployed, tasks: dict[str, Task],
                 truth: Trigger | None, rejected_by_validation: dict[str, list[str]]) -> None:
        self.params, self.deployed, self.tasks, self.truth = params, deployed, tasks, truth
        self.rejected_by_validation = rejected_by_validation
        self.first: dict[str, Decision] = {}  # content hash -> decision of its first report
        self.bugs: dict[str, Bug] = {}

    def decide(self, path: Path) -> Decision:
        """One report file -> one decision; never raises."""
        start = time.perf_counter()
        try:
            decision = self._decide(path)
        except Exception as err:  # a report that breaks intake is rejected, not fatal
            decision = Decision(path.stem, False, [f"intake failed: {type(err).__name__}: {err}"],
                                {"error": "internal"})
        decision.numbers.update(file=path.name, seconds=round(time.perf_counter() - start, 3))
        return decision

    def _decide(self, path: Path) -> Decision:
        failed_gx = self._validation_reasons(path)
        try:
            report = read_report(path, self.tasks)
        except ReportError as err:
            return Decision(path.stem, False, [f"invalid report: {err}", *failed_gx], {"error": err.code})
        if failed_gx:
            return Decision(report.id, False, failed_gx, {"error": "validation"})
        if report.content_hash in self.first:
            return self._merge(report)
        decision, bug = intake_report(report, self.deployed, self.tasks, self.params.intake,
                                      self.truth, self.params.seed)
        self.first[report.content_hash] = decision
        if bug is not None:
            self.bugs[bug.id] = bug
        return decision

    def _validation_reasons(self, path: Path) -> list[str]:
        for key in (path.name, path.stem):
            if key in self.rejected_by_validation:
                return ["failed validation: " + "; ".join(self.rejected_by_validation[key])]
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
    outcomes = Counter(d.outcome for d in decisions)
    ious = [d.numbers["iou"] for d in decisions
            if d.outcome == "accepted" and d.numbers.get("iou") is not None]
    errors = Counter(d.numbers.get("error") for d in decisions if d.outcome == "rejected")
    return {"reports": len(decisions), "accepted": outcomes["accepted"],
            "rejected": outcomes["rejected"], "merged": outcomes["merged"],
            "rejected_by": dict(sorted(errors.items())),
            "mean_iou": sum(ious) / len(ious) if ious else None}


def main() -> None:
    params = setup_stage()
    paths = params.paths
    inbox = inbox_folder(paths)
    rejected = read_json(VALIDATION).get("reports", {}).get("rejected", {})
    truth, _ = load_truth(paths)
    intake = Intake(params, load_deployed(paths), load_tasks(paths.tasks), truth, rejected)
    decisions = [intake.decide(path) for path in report_paths(inbox)]
    with atomic_dir(REGISTRY) as registry:
        for bug in intake.bugs.values():
            save_bug(bug, registry)
    write_jsonl(LOG, [d.to_record() for d in decisions])
    write_json(SUMMARY, summary(decisions))
    for d in decisions:
        print(f"intake: {d.report_id}: {d.outcome}: {'; '.join(d.reasons)}")


if __name__ == "__main__":
    main()
