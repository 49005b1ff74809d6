"""`mudjack submit`: add a client's bug report to the inbox that the validate and intake stages read."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mudjack.config import ParamsError, read_params_yaml
from mudjack.io import atomic_path
from mudjack.reports import (
    MAX_INPUT_BYTES,
    MAX_JSON_BYTES,
    REPORT_SUFFIX,
    BugReport,
    input_path,
    load_report_json,
)
from mudjack.safepath import Quarantined, entries, one_line, printable, quarantine, read_bounded


class InboxError(ValueError):
    """A report that cannot go into the inbox; the message says why."""


def inbox_folder(root: Path, *, inside: bool = True) -> Path:
    """`paths.inbox` of `root`/params.yaml, relative to `root`; with `inside`, refused where it
    resolves outside the project (`submit` writes there)."""
    source = Path(root) / "params.yaml"
    paths = read_params_yaml(source).get("paths") or {}  # bounded, alias-free
    if not isinstance(paths, dict):
        raise ParamsError(f"{one_line(source)}: paths must be a mapping, not {type(paths).__name__}")
    inbox = paths.get("inbox")
    if not isinstance(inbox, str | None):
        raise ParamsError(f"{one_line(source)}: paths.inbox must be a folder name, "
                          f"not {type(inbox).__name__}")
    if not inbox:
        raise InboxError("params.yaml sets no paths.inbox")
    return _inside_project(Path(root), inbox, source) if inside else Path(root) / inbox


def _inside_project(root: Path, inbox: str, source: Path) -> Path:
    """`root`/`inbox`, refused (ParamsError) where it resolves outside `root`."""
    try:
        outside = not Path(os.path.realpath(root / inbox)).is_relative_to(os.path.realpath(root))
    except ValueError as err:  # a NUL in the name
        raise ParamsError(f"{one_line(source)}: paths.inbox {printable(inbox)}: {err}") from None
    if outside:
        raise ParamsError(f"{one_line(source)}: paths.inbox {printable(inbox)} is outside the "
                          "project: the inbox must be a folder inside it")
    return root / inbox


def stage_writing(root: Path, folder: Path) -> str | None:
    """The dvc.yaml stage whose output `folder` is (a report put there is overwritten when
    that stage reruns), or None."""
    from dvc.repo import Repo

    target = Path(folder).resolve()
    with Repo(str(root)) as repo:
        for out in repo.index.outs:
            if Path(out.fs_path).resolve() == target:
                return getattr(out.stage, "name", None) or out.stage.addressing
    return None


def add_to_inbox(report_file: Path, report: BugReport, inbox: Path) -> Path:
    """Copy the report JSON and its input into `inbox` (input first, so a report there always
    has its input), as `<id>.json` and the input's name as the report gives it: a relative
    name inside the report's folder (mudjack.safepath), so nothing lands outside `inbox`.
    A name already in the inbox (in any case) is refused. Returns the copied JSON's path."""
    report_file = Path(report_file)
    name = str(load_report_json(report_file)["input"])
    if name.lower().endswith(REPORT_SUFFIX):  # every *.json in the inbox is read as a report
        raise InboxError(f"the input {printable(name)} is named as a report ({REPORT_SUFFIX}); "
                         "send it as .png, .npy or .txt")
    source = input_path(report_file, name)
    targets = {source: inbox / name, report_file: inbox / f"{report.id}{REPORT_SUFFIX}"}
    for target in targets.values():
        _check_target(target, inbox)
    limits = {source: MAX_INPUT_BYTES, report_file: MAX_JSON_BYTES}
    for path, target in targets.items():
        data = read_bounded(path, limits[path])
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return targets[report_file]


def _check_target(target: Path, inbox: Path) -> None:
    """`target` must be new (no name differing only in case either) and land inside `inbox`."""
    taken = {p.name.lower() for p in entries(target.parent, "")}
    if target.name.lower() in taken:
        raise InboxError(f"already in the inbox: {printable(target.name)}")
    real_inbox = Path(os.path.realpath(inbox))
    if not Path(os.path.realpath(target)).is_relative_to(real_inbox):
        raise InboxError(f"{printable(target.name)} would land outside the inbox")


def quarantine_inbox(root: Path, dest: Path) -> list[Quarantined]:
    """Move the inbox's special files (FIFO, device, socket, a link leaving it) into `dest`
    before DVC hashes the inbox (it would hang on a FIFO), logging one line per file."""
    try:  # an inbox outside the project is guarded too: DVC would hang hashing a FIFO there
        inbox = inbox_folder(root, inside=False)
    except (InboxError, OSError, ParamsError):  # no inbox to guard: the stages say why
        return []
    moved = quarantine(inbox, dest)
    for entry in moved:
        print(entry.log_line(), file=sys.stderr)
    return moved
