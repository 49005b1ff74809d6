"""`mudjack submit`: add a client's bug report to the inbox that the validate and intake stages read."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mudjack.config import ParamsError, read_params_yaml
from mudjack.io import write_new
from mudjack.reports import (
    MAX_INPUT_BYTES,
    MAX_JSON_BYTES,
    REPORT_SUFFIX,
    BugReport,
    input_path,
    load_report_json,
)
from mudjack.safepath import Quarantined, entries, one_line, printable, quarantine, read_bounded

LOCK_WAIT_S = 10.0  # how long a submit waits for another one writing to the same inbox


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
    Returns the copied JSON's path.

    A name already in the inbox (in any case) is refused, also when another submit takes it
    between the check and the copy: nothing in the inbox is ever replaced. One exception: an
    input left by a submit killed before its JSON landed (byte-identical, named by no report)
    is reused, so the resubmit works. Where the JSON cannot be written, the input this submit
    copied is removed again, so the error leaves the inbox as it was."""
    report_file = Path(report_file)
    name = str(load_report_json(report_file)["input"])
    if name.lower().endswith(REPORT_SUFFIX):  # every *.json in the inbox is read as a report
        raise InboxError(f"the input {printable(name)} is named as a report ({REPORT_SUFFIX}); "
                         "send it as .png, .npy or .txt")
    data = read_bounded(input_path(report_file, name), MAX_INPUT_BYTES)
    text = read_bounded(report_file, MAX_JSON_BYTES)
    target, json_target = inbox / name, inbox / f"{report.id}{REPORT_SUFFIX}"
    for path in (target, json_target):
        _check_inside(path, inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    with _inbox_lock(inbox):
        reuse = _is_leftover(target, data, inbox)
        if not reuse:
            _check_free(target)
        _check_free(json_target)
        if not reuse:
            _place_new(target, data)
        try:
            _place_new(json_target, text)
        except BaseException:  # disk full, a JSON of that name came first: take the input back
            if not reuse:
                target.unlink(missing_ok=True)
            raise
    return json_target


def _check_free(target: Path) -> None:
    """`target` must be new: no name differing only in case either (the early, clear refusal;
    `_place_new` refuses a name taken after this check)."""
    taken = {p.name.lower() for p in entries(target.parent, "")}
    if target.name.lower() in taken:
        raise InboxError(f"already in the inbox: {printable(target.name)}")


def _check_inside(target: Path, inbox: Path) -> None:
    """`target` must land inside `inbox`."""
    real_inbox = Path(os.path.realpath(inbox))
    if not Path(os.path.realpath(target)).is_relative_to(real_inbox):
        raise InboxError(f"{printable(target.name)} would land outside the inbox")


def _place_new(target: Path, data: bytes) -> None:
    """`data` as `target`, never replacing a file another submit put there after the checks."""
    try:
        write_new(target, data)
    except FileExistsError:
        raise InboxError(f"already in the inbox: {printable(target.name)}") from None


def _is_leftover(target: Path, data: bytes, inbox: Path) -> bool:
    """Whether `target` is what a killed submit of this same input left: a regular file with
    exactly `data` that no report JSON in the inbox names."""
    try:
        if read_bounded(target, MAX_INPUT_BYTES, follow=False) != data:
            return False
    except (OSError, ValueError):  # missing, a link, not a regular file, too large
        return False
    name = target.relative_to(inbox).as_posix().lower()
    return not any(_names_input(report, name) for report in entries(inbox, REPORT_SUFFIX))


def _names_input(report: Path, name: str) -> bool:
    """Whether the inbox's `report` names the input `name` (lower case); an unreadable report
    names none: validate rejects it without reading any input."""
    try:
        value = load_report_json(report).get("input")
    except (OSError, ValueError):
        return False
    return isinstance(value, str) and Path(value).as_posix().lower() == name


@contextmanager
def _inbox_lock(inbox: Path) -> Iterator[None]:
    """Hold an exclusive flock on the inbox folder itself (no lock file for DVC to hash) while a
    submit checks and copies, so that no other submit takes its input for a leftover meanwhile.
    The kernel drops it when a submit is killed."""
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _acquire(fd)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int) -> None:
    """Lock `fd`, waiting at most LOCK_WAIT_S; a filesystem that cannot lock a folder (NFS)
    goes unlocked: `_place_new` still never replaces a file."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise InboxError("another submit is writing to the inbox; try again") from None
            time.sleep(0.05)
        except OSError:
            return


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
