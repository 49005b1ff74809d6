"""Repair stage: check each report against the schema, reproduce it, reverse and verify its trigger.

Every report file in the inbox gets exactly one decision in bugs/_intake_log.jsonl (inside
the registry, so both are replaced by one directory swap): accepted, rejected (with its
reasons, numbers and error code) or merged (a duplicate of an earlier report: same task,
label and input). A bad report never stops the others (mudjack/intake). Temporaries left by
a killed earlier run are removed first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mudjack.bugs import save_bug
from mudjack.data import load_tasks
from mudjack.intake import Intake, summary
from mudjack.io import (
    ArtifactError,
    atomic_dir,
    read_json_bounded,
    ready_outputs,
    write_json,
    write_jsonl,
)
from mudjack.reports import report_paths
from mudjack.safepath import one_line, printable
from stages.artifacts import BUGS, INTAKE_LOG, INTAKE_SUMMARY, VALIDATION
from stages.common import load_deployed, load_truth_pairs
from stages.config import inbox_folder, setup_stage


def main() -> None:
    params = setup_stage()
    paths = params.paths
    ready_outputs(BUGS, INTAKE_SUMMARY)
    inbox = inbox_folder(paths)
    intake = Intake(load_deployed(paths), load_tasks(paths.tasks), params=params.intake, seed=params.seed,
                    truth=load_truth_pairs(paths), validation=validation_verdicts(VALIDATION))
    decisions = [intake.decide(path) for path in report_paths(inbox)]
    with atomic_dir(BUGS) as registry:
        for bug in intake.bugs.values():
            save_bug(bug, registry)
        write_jsonl(registry / INTAKE_LOG.relative_to(BUGS), [d.to_record() for d in decisions])
    write_json(INTAKE_SUMMARY, {**summary(decisions), "device": str(intake.device)})
    for d in decisions:
        print(decision_line(d.numbers["file"], d.outcome, d.numbers.get("error"), d.reasons))


def validation_verdicts(path: Path) -> dict[str, Any]:
    """The validate stage's verdicts on the inbox's reports (`reports` of validation.json);
    an ArtifactError naming the file when it is missing, damaged or not validate's output."""
    try:
        document = read_json_bounded(path)
    except ArtifactError as err:
        raise ArtifactError(f"{err}: run validate first") from None
    verdicts = document.get("reports") if isinstance(document, dict) else None
    if not _is_verdicts(verdicts):
        raise ArtifactError(f'{path}: not the validate stage\'s output (a "reports" object with the '
                            'rejected reports\' reasons and codes by file): run validate first')
    return verdicts


def _is_verdicts(verdicts: Any) -> bool:
    """Whether `verdicts` is shaped as validate writes them: {"rejected": {file: [reason, ...]},
    "codes": {file: code}, ...}."""
    if not isinstance(verdicts, dict):
        return False
    rejected, codes = verdicts.get("rejected", {}), verdicts.get("codes", {})
    return (isinstance(rejected, dict) and isinstance(codes, dict)
            and all(isinstance(r, list) and all(isinstance(x, str) for x in r) for r in rejected.values())
            and all(isinstance(code, str) for code in codes.values()))


def decision_line(file: str, outcome: str, code: str | None, reasons: list[str]) -> str:
    """One printed line per report file: its name escaped, so a name cannot forge lines."""
    tag = f" [{code}]" if code and outcome == "rejected" else ""
    return f"intake: {printable(file)}: {outcome}{tag}: {one_line('; '.join(reasons))}"


if __name__ == "__main__":
    main()
