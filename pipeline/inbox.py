"""`mudjack submit`: add a client's bug report to the inbox that the validate and intake stages read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from mudjack.io import atomic_path
from mudjack.reports import BugReport


class InboxError(ValueError):
    """A report that cannot go into the inbox; the message says why."""


def inbox_folder(root: Path) -> Path:
    """`paths.inbox` of `root`/params.yaml, relative to `root`."""
    params = yaml.safe_load((Path(root) / "params.yaml").read_text()) or {}
    inbox = (params.get("paths") or {}).get("inbox")
    if not inbox:
        raise InboxError("params.yaml sets no paths.inbox")
    return Path(root) / inbox


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
    has its input); a name already in the inbox is refused. Returns the copied JSON's path."""
    report_file = Path(report_file).resolve()
    source_dir = report_file.parent
    meta_input = report_file.parent / _input_name(report_file)
    targets = {report_file: inbox / report_file.name,
               meta_input: inbox / meta_input.relative_to(source_dir)}
    taken = [t.name for t in targets.values() if t.exists()]
    if taken:
        raise InboxError(f"already in the inbox: {', '.join(taken)} (report {report.id!r})")
    for source in (meta_input, report_file):
        with atomic_path(targets[source]) as tmp:
            shutil.copyfile(source, tmp)
    return targets[report_file]


def _input_name(report_file: Path) -> str:
    return str(json.loads(report_file.read_text())["input"])
