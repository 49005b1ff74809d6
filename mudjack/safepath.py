"""One rule for every path that comes from input (a report's `input`, a report file, a CLI argument).

A name is a relative path inside its root: no absolute path, no `..` part, no NUL or control
character, no part over NAME_MAX bytes. What it names must be a regular file (never a FIFO,
device, socket or directory), reached through symlinks only when they stay inside the root.
Reads are bounded (at most the limit + 1 bytes) and never block: files are opened with
O_NONBLOCK and fstat'ed before any byte is read, so a FIFO is refused, not waited on.
Every refusal is an `InputError` whose `code` names the rule (documented in docs/reports.md).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NAME_MAX = 255       # bytes per path part (Linux NAME_MAX)
MAX_PARTS = 16       # a report input deeper than this is not a sensible name
PRINT_LIMIT = 200    # characters of a name shown in a log line
# Error numbers of open()/stat() turned into codes; anything else is `unreadable`.
ERRNO_CODES = {
    errno.ELOOP: "symlink_loop", errno.ENAMETOOLONG: "bad_name", errno.ENOENT: "bad_input",
    errno.ENOTDIR: "bad_input", errno.EISDIR: "not_regular", errno.ENXIO: "not_regular",
}


class InputError(ValueError):
    """An input (a path, a file, a report) that cannot be used; `code` names the rule broken."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def printable(name: object) -> str:
    """`name` quoted for a log line, control characters and newlines escaped (repr), clipped
    to PRINT_LIMIT characters, so a file name can never forge an output line."""
    text = repr(str(name))
    return f"{text[:PRINT_LIMIT]}...({len(text)} chars)" if len(text) > PRINT_LIMIT else text


def one_line(text: object) -> str:
    """`text` with every non-printable character escaped: a message stays one log line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def check_name(name: str, *, what: str = "name") -> None:
    """Refuse a name with NUL or control characters, an unencodable character, or a part
    longer than NAME_MAX bytes."""
    if not name:
        raise InputError("bad_name", f"{what} is empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InputError("bad_name", f"{what} {printable(name)} holds NUL or control characters")
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError as err:
        raise InputError("bad_name", f"{what} {printable(name)} cannot be a file name: {err}") from err
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise InputError("bad_name", f"{what} {printable(name)} has a part over {NAME_MAX} bytes")


def check_folder_name(name: str, *, what: str = "name") -> None:
    """`check_name`, and one plain part: no separator, not `.` or `..` (a task name is its
    folder's name; a path there would put the task elsewhere)."""
    check_name(name, what=what)
    if name in (".", "..") or "/" in name or "\\" in name:
        raise InputError("bad_name", f"{printable(name)} is not a plain folder name (no /, \\, . or ..)")


def inside(root: str | Path, name: str) -> Path:
    """The real path of `name` relative to `root`, which must exist and stay inside `root`."""
    check_name(name, what="input")
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or len(parts) > MAX_PARTS:
        raise InputError("bad_input", f"input {printable(name)} points outside the inbox")
    base = Path(os.path.realpath(root))
    try:
        real = Path(os.path.realpath(base / name, strict=True))
    except OSError as err:
        raise _path_error(err, name) from err
    if not real.is_relative_to(base) or real == base:
        raise InputError("bad_input", f"input {printable(name)} points outside the inbox")
    return real


def read_bounded(path: str | Path, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file `path`, refused (`too_large`) beyond `limit` bytes.

    Opened without blocking (a FIFO is refused, not waited on) and, unless `follow`, without
    following a final symlink; the kind and size come from fstat of the open descriptor.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= 0 if follow else os.O_NOFOLLOW
    path = Path(path)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise _path_error(err, path.name) from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError("not_regular", f"{printable(path.name)} is a {kind(info.st_mode)}, "
                                           "not a regular file")
        if info.st_size > limit:
            raise InputError("too_large", f"{printable(path.name)} is {info.st_size} bytes; "
                                         f"the limit is {limit}")
        data = _read_at_most(fd, limit + 1)
    except OSError as err:
        raise _path_error(err, path.name) from err
    finally:
        os.close(fd)
    if len(data) > limit:  # the file grew, or its size lies (e.g. procfs)
        raise InputError("too_large", f"{printable(path.name)} is over the limit of {limit} bytes")
    return data


def _read_at_most(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _path_error(err: OSError, name: str) -> InputError:
    code = ERRNO_CODES.get(err.errno or 0, "unreadable")
    if err.errno == errno.ENOENT:
        return InputError(code, f"file {printable(name)} not found")
    return InputError(code, f"cannot open {printable(name)}: {err.strerror or err}")


def kind(mode: int) -> str:
    """What a stat mode is, in words."""
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symlink")):
        if test(mode):
            return word
    return "special file"


def has_suffix(name: str, suffix: str) -> bool:
    """Suffixes match case-insensitively (`X.JSON` is a report like `x.json`)."""
    return name.lower().endswith(suffix.lower())


def entries(folder: str | Path, suffix: str) -> list[Path]:
    """The entries of `folder` whose name ends in `suffix` (any case), sorted by name; none
    when `folder` is not a directory. Nothing is followed or opened."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    with os.scandir(folder) as scan:
        names = sorted(e.name for e in scan if has_suffix(e.name, suffix))
    return [folder / name for name in names]


# --------------------------------------------------------------------------- quarantine


@dataclass(frozen=True)
class Quarantined:
    name: str       # relative to the scanned folder
    reason: str     # fifo, socket, device, link_outside, link_loop, link_broken, special
    moved_to: Path | None  # None: could not be moved, unlinked instead

    def log_line(self) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "removed"
        return f"quarantine: {printable(self.name)} ({self.reason}) {where}"


def hazard(path: Path, root: Path) -> str | None:
    """Why the entry `path` (not followed) must leave `root` before anything hashes or reads
    it, or None for a regular file, a directory, or a link to one inside `root`."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        try:
            real = Path(os.path.realpath(path, strict=True))
            target = os.stat(real).st_mode
        except OSError as err:
            return "link_loop" if err.errno == errno.ELOOP else "link_broken"
        if not real.is_relative_to(Path(os.path.realpath(root))):
            return "link_outside"
        mode = target
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"


def _walk(folder: Path, depth: int = 0) -> Iterator[Path]:
    """Every entry under `folder`, links not followed, at most MAX_PARTS deep."""
    with os.scandir(folder) as scan:
        found = sorted(scan, key=lambda e: e.name)
    for entry in found:
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and depth < MAX_PARTS:
            yield from _walk(Path(entry.path), depth + 1)


def quarantine(folder: str | Path, dest: str | Path) -> list[Quarantined]:
    """Move every hazard (FIFO, device, socket, a link leaving `folder`, looping or broken)
    out of `folder` into `dest` by rename, never reading it; unlink what cannot be moved."""
    folder, dest = Path(folder), Path(dest)
    if not folder.is_dir():
        return []
    moved = []
    for path in list(_walk(folder)):
        try:
            reason = hazard(path, folder)
        except FileNotFoundError:  # inside a folder moved away already
            continue
        if reason is not None:
            moved.append(Quarantined(str(path.relative_to(folder)), reason, _move_away(path, dest)))
    return moved


def _move_away(path: Path, dest: Path) -> Path | None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tag = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:100]  # the real name is in the log line
        target = dest / f"{os.getpid()}-{os.urandom(4).hex()}-{tag}"
        os.rename(path, target)
        return target
    except OSError:  # another filesystem, or no write access there
        path.unlink(missing_ok=True)
        return None
