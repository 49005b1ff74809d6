"""Repair stage: check each report against the schema, reproduce it, reverse and verify its trigger.

Every report file in the inbox gets exactly one decision in reports/intake_log.jsonl:
accepted, rejected (with its reasons and numbers) or merged (a duplicate of an earlier
report: same task, label and input). A bad report never stops the others (mudjack/intake).
"""

from __future__ import annotations

from mudjack.bugs import save_bug
from mudjack.data import load_tasks
from mudjack.intake import Intake, summary
from mudjack.io import atomic_dir, read_json, write_json, write_jsonl
from mudjack.reports import report_paths
from stages.artifacts import BUGS as REGISTRY
from stages.artifacts import INTAKE_LOG as LOG
from stages.artifacts import INTAKE_SUMMARY as SUMMARY
from stages.artifacts import VALIDATION
from stages.common import load_deployed, load_truth
from stages.config import inbox_folder, setup_stage


def main() -> None:
    params = setup_stage()
    paths = params.paths
    inbox = inbox_folder(paths)
    rejected = read_json(VALIDATION).get("reports", {}).get("rejected", {})
    truth, _ = load_truth(paths)
    intake = Intake(load_deployed(paths), load_tasks(paths.tasks), params=params.intake, seed=params.seed,
                    truth=truth, rejected_by_validation=rejected)
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
