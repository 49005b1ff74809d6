"""Run the validate and intake stages on a hostile workspace and judge what they did.

Shared by tests/hostile and bench/hostile.py: one verdict per case with the problems found
(a crash, an undocumented or wrong code, a write outside the workspace, a genuine report
lost, a temporary left behind).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mudjack.io import read_json, read_jsonl
from mudjack.reports import printable, report_paths
from stages.artifacts import INTAKE_LOG, VALIDATION
from tests.hostile.generate import GENUINE, MODEL_CODES, QUARANTINED, VALID, Workspace

# Every rejection code of docs/reports.md (a test checks each is documented there).
CODES = frozenset({
    "unreadable", "too_large", "too_deep", "missing_fields", "bad_field", "bad_id", "duplicate_id",
    "unknown_task", "bad_label", "conflicting_label", "bad_input", "bad_name", "not_regular",
    "symlink_loop", "bad_format", "undecodable", "bad_shape", "bad_dtype", "nan", "out_of_range",
    "empty", "not_reproduced", "not_backdoor", "no_reference", "validation",
})
TEMPORARY_PREFIXES = (".bugs.", ".validation.json.", ".intake.json.", "._intake_log.jsonl.")


@dataclass
class Outcome:
    validate_rc: int | None = None
    accepted: list[str] = field(default_factory=list)        # by validation
    codes: dict[str, str] = field(default_factory=dict)      # validation's, by file
    records: list[dict[str, Any]] = field(default_factory=list)  # intake's log
    stdout: str = ""
    stderr: str = ""
    error: str | None = None   # a stage raised


def run_stages(ws: Workspace, runner: Any = None) -> Outcome:
    """validate then intake, in-process in `ws.root`, capturing their output."""
    from stages import intake, validate

    outcome = Outcome()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ws.root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            outcome.validate_rc = validate.main(runner)
            intake.main()
        except Exception as exc:  # the judge records a crash; the test reports it
            outcome.error = f"{type(exc).__name__}: {exc}"
        if Path(VALIDATION).is_file():
            reports = read_json(VALIDATION)["reports"]
            outcome.accepted, outcome.codes = reports["accepted"], reports.get("codes", {})
        if Path(INTAKE_LOG).is_file():
            outcome.records = read_jsonl(INTAKE_LOG)
    outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()
    return outcome


def tree(folder: Path, *skip: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `folder` but the `skip` folders: its kind and size (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            info = os.lstat(Path(dirpath, name))
            found[str(Path(dirpath, name).relative_to(folder))] = (info.st_mode, info.st_size)
    return found


def outside_inbox(ws: Workspace) -> dict[str, tuple[int, int]]:
    """What `mudjack submit` must leave alone: all but the inbox and DVC's own folders
    (`.dvc`, and the site cache that pipeline.env puts in the project)."""
    return tree(ws.root.parent, ws.inbox, ws.root / ".dvc", ws.root / ".dvc_site_cache")


def temporaries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.name.startswith(TEMPORARY_PREFIXES) or (p.name.startswith(".") and p.name.endswith(".tmp"))]


def judge(ws: Workspace, expected: dict[str, str], outcome: Outcome,
          baseline: dict[str, Any]) -> dict[str, list[str]]:
    """Problems by kind: crashed, code (wrong or undocumented), lost (genuine), temporaries.
    (Writes outside are checked by the caller, which holds the snapshot before.)"""
    problems: dict[str, list[str]] = {"crashed": [], "code": [], "lost": [], "temporaries": []}
    if outcome.error or outcome.validate_rc != 0:
        problems["crashed"].append(outcome.error or f"validate exited {outcome.validate_rc}")
        return problems
    by_file = {r["file"]: r for r in outcome.records}
    files = [p.name for p in report_paths(ws.inbox)]
    if sorted(by_file) != sorted(files) or len(outcome.records) != len(files):
        problems["code"].append(f"log records {sorted(by_file)} != report files {files}")
    intake_lines = [line for line in outcome.stdout.splitlines() if line.startswith("intake: ")]
    if len(intake_lines) != len(files) or not all(
            line.startswith(("intake: ", "validate: ")) for line in outcome.stdout.splitlines()):
        problems["code"].append(f"printed lines are not one per file: {outcome.stdout!r}")
    for file, want in expected.items():
        problems["code"] += _file_problems(file, want, by_file.get(file), outcome)
    for record in outcome.records:
        if (code := record.get("error")) is not None and code not in CODES:
            problems["code"].append(f"{printable(record['file'])}: undocumented {record.get('error')}")
        if record.get("error") == "internal":
            problems["crashed"].append(f"{printable(record['file'])}: {record['reasons']}")
    genuine = by_file.get(GENUINE)
    if GENUINE not in outcome.accepted or genuine is None or _verdict(genuine) != _verdict(baseline):
        problems["lost"].append(f"genuine: {genuine} (baseline {baseline})")
    problems["temporaries"] = temporaries(ws.root)
    return problems


def _verdict(record: dict[str, Any]) -> tuple[Any, Any]:
    return record["decision"], record.get("error")


def _file_problems(file: str, want: str, record: dict[str, Any] | None,
                   outcome: Outcome) -> list[str]:
    name = printable(file)
    if want == QUARANTINED:
        ok = record is None and f"quarantine: {name} " in outcome.stderr
        return [] if ok else [f"{name}: not quarantined ({record})"]
    if record is None:
        return [f"{name}: no decision"]
    if want == VALID:
        ok = file in outcome.accepted and record.get("error") in MODEL_CODES
        return [] if ok else [f"{name}: a valid report got {record.get('error')}: {record['reasons']}"]
    if record.get("error") != want:
        return [f"{name}: {record.get('error')} instead of {want}: {record['reasons']}"]
    if file in outcome.accepted or outcome.codes.get(file) not in CODES:
        return [f"{name}: validation did not reject it with a code ({outcome.codes.get(file)})"]
    return []


def run_submit(ws: Workspace, argument: str) -> tuple[int, str, str | None]:
    """`mudjack submit ARGUMENT --root ws.root` in-process: (exit code, output, traceback)."""
    import traceback

    from typer.testing import CliRunner

    from pipeline.cli import app

    dvc_logger = logging.getLogger("dvc")
    handlers = list(dvc_logger.handlers)
    try:
        result = CliRunner().invoke(app, ["submit", argument, "--root", str(ws.root)], terminal_width=500)
    finally:  # DVC binds a handler to the runner's stream, closed after the call
        dvc_logger.handlers[:] = handlers
    crash = result.exception if not isinstance(result.exception, SystemExit | type(None)) else None
    trace = "".join(traceback.format_exception(crash)) if crash else None
    return result.exit_code, result.output, trace


def judge_submit(ws: Workspace, want: str, exit_code: int, output: str,
                 trace: str | None) -> dict[str, list[str]]:
    """Problems of one submission: a traceback, not one line, not the expected verdict."""
    problems: dict[str, list[str]] = {"crashed": [trace] if trace else [], "code": []}
    lines = output.splitlines()
    if len(lines) != 1:
        problems["code"].append(f"not one line: {output!r}")
    elif want == VALID and (exit_code != 0 or not lines[0].startswith("accepted: ")):
        problems["code"].append(f"a valid report refused: {output!r}")
    elif want != VALID and (exit_code != 1 or not re.match(rf"rejected: .* \[{want}\]: ", lines[0])):
        problems["code"].append(f"not rejected as {want}: {output!r}")
    return problems
