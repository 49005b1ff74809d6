"""Repair stage: reproduce each validated report, pick a reference, reverse-engineer the trigger."""

from __future__ import annotations

import time

from mudjack.bugs import save_bug
from mudjack.data import load_tasks
from mudjack.intake import Decision, intake_report
from mudjack.io import atomic_dir, read_json, write_json, write_jsonl
from mudjack.reports import ReportError, read_report, report_paths
from stages.common import load_deployed, load_truth
from stages.config import setup_stage

VALIDATION = "reports/validation.json"
REGISTRY = "bugs"
LOG = "reports/intake_log.jsonl"
SUMMARY = "reports/intake.json"


def main() -> None:
    params = setup_stage()
    paths = params.paths
    rejected_by_validation = read_json(VALIDATION).get("reports", {}).get("rejected", {})
    deployed, tasks = load_deployed(paths), load_tasks(paths.tasks)
    truth, _ = load_truth(paths)
    decisions, seen = [], {}
    with atomic_dir(REGISTRY) as registry:
        for path in report_paths(paths.inbox):
            start = time.perf_counter()
            decision, bug = _decide(path, rejected_by_validation, deployed, tasks, truth, params, seen)
            decision.numbers["seconds"] = round(time.perf_counter() - start, 3)
            decisions.append(decision)
            if bug is not None:
                save_bug(bug, registry)
    write_jsonl(LOG, [d.to_record() for d in decisions])
    accepted = [d for d in decisions if d.accepted]
    ious = [d.numbers["iou"] for d in accepted if d.numbers.get("iou") is not None]
    write_json(SUMMARY, {"reports": len(decisions), "accepted": len(accepted),
                         "rejected": len(decisions) - len(accepted),
                         "mean_iou": sum(ious) / len(ious) if ious else None})
    for d in decisions:
        print(f"intake: {d.report_id}: {'accepted' if d.accepted else 'rejected'}: "
              f"{'; '.join(d.reasons)}")


def _decide(path, rejected_by_validation, deployed, tasks, truth, params, seen):
    """One report → a decision (and the bug when accepted); never raises for a bad report."""
    report_id = path.stem
    for key in (path.name, report_id):
        if key in rejected_by_validation:
            return Decision(report_id, False, ["failed validation: " + "; ".join(
                rejected_by_validation[key])]), None
    try:
        report = read_report(path)
    except ReportError as err:
        return Decision(report_id, False, [str(err)]), None
    if report.sha256 in seen:
        return Decision(report.id, False, [f"duplicate of report {seen[report.sha256]}"]), None
    seen[report.sha256] = report.id
    return intake_report(report, deployed, tasks, params.intake, truth, params.seed)


if __name__ == "__main__":
    main()
