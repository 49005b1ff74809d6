"""Artifact I/O: every write lands atomically (temp file + rename), nothing is pickled."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mudjack.safepath import InputError, kind, one_line, read_bounded


@contextmanager
def _sibling(path: Path) -> Iterator[Path]:
    """A new empty temporary file beside `path` (`.<name>.*.tmp`), removed after the block
    unless the block moved it away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp makes it owner-only; artifacts are read by other users too
    try:
        yield tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    with _sibling(path) as tmp:
        yield tmp
        os.replace(tmp, path)


def write_new(path: str | Path, data: bytes) -> None:
    """Write `data` as `path`, whole or not at all, never replacing a file there: a complete
    temporary is hard-linked to the name, which raises FileExistsError where another process
    took it first (`atomic_path` would replace it)."""
    path = Path(path)
    with _sibling(path) as tmp:
        tmp.write_bytes(data)
        os.link(tmp, path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            _swap_in(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace the folder `path` by `tmp`; when a move fails, the previous `path` stays (or is
    put back) and no `.<name>.old.*` folder is left beside it."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    try:
        os.replace(path, old / path.name)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old)


def remove_stale_temporaries(*paths: str | Path) -> list[Path]:
    """Remove what a killed `atomic_path` or `atomic_dir` left beside each of `paths` (its
    `.<name>.*` temporaries); only their own, so call it at the start of the stage that
    writes them."""
    stale = []
    for path in map(Path, paths):
        if path.parent.is_dir():
            stale += [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    for old in stale:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    return stale


def ready_outputs(*paths: str | Path, root: str | Path = ".") -> None:
    """Before a stage writes `paths`: each must resolve inside `root` (the project; a link
    out of it would have the stage write elsewhere), and what a killed run left beside it
    is removed (`remove_stale_temporaries`)."""
    base = Path(os.path.realpath(root))
    outputs = [Path(root) / path for path in paths if str(path) not in ("", ".")]  # "": no such output
    for path in outputs:
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(base):
            raise ArtifactError(f"{path}: resolves to {real}, outside the project {base}; a stage "
                                "writes its outputs inside the project only (make it a folder, not a link)")
    remove_stale_temporaries(*outputs)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


MAX_JSON_BYTES = 64 << 20  # a stage's JSON output (a summary, a log of one line per report)


class ArtifactError(ValueError):
    """A file one stage wrote for another (a summary, a log, the bug registry) that is missing or
    damaged: one line naming the file and the problem."""


def read_json_bounded(path: str | Path, *, limit: int = MAX_JSON_BYTES, lines: bool = False) -> Any:
    """The JSON value in the regular file `path` (with `lines`, the list of its non-blank lines'
    values: JSON Lines), read at most `limit` bytes and without blocking on a FIFO; anything else
    (missing, not a regular file, too large, not UTF-8 JSON, nested too deeply) is an
    ArtifactError naming the file."""
    try:
        text = read_bounded(path, limit).decode("utf-8")
        if not lines:
            return json.loads(text)
        return [_json_line(number, line) for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    except InputError as err:  # its message names the file by its last part only
        raise ArtifactError(f"{one_line(path)}: {err}") from None
    except RecursionError:
        raise ArtifactError(f"{one_line(path)}: not valid JSON (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ArtifactError(f"{one_line(path)}: not valid JSON ({one_line(err)})") from None


def _json_line(number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as err:
        raise ValueError(f"line {number}: {err}") from None


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_npz(path: str | Path, *, compress: bool = True, **arrays: np.ndarray) -> None:
    """Arrays as an npz; `compress=False` stores them as is, so `open_npz` can map them."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


def write_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """torch tensors as safetensors, atomically, with a byte-stable header.

    The safetensors writer orders metadata keys by a per-process hash, so the same weights
    would give files (and DVC hashes) that differ from run to run; the keys are sorted here.
    """
    from safetensors.torch import save

    with atomic_path(path) as tmp:
        tmp.write_bytes(sorted_metadata(save(tensors, metadata=metadata)))


def sorted_metadata(data: bytes) -> bytes:
    """The same safetensors bytes with the header's metadata keys in sorted order."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # never expected: same keys and values, only reordered
        return data
    return data[:8] + text.ljust(length) + data[8 + length:]


# What numpy and zipfile raise on a file that is not a well-formed npz (an empty file, one bare
# .npy, a cut-off member, a header with a negative or absurd shape); OSError (missing, a
# folder, unreadable) passes through as it is.
_MALFORMED = (EOFError, ValueError, TypeError, OverflowError, KeyError, IndexError, struct.error,
              zipfile.BadZipFile, zlib.error, MemoryError)


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


def require_regular_file(path: str | Path) -> None:
    """ValueError naming `path` unless it is a regular file (a symlink to one is fine): opening a
    FIFO waits for a writer forever, a device reads forever. A missing file raises
    FileNotFoundError as open() would."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: a {kind(mode)}, not a regular file")


@contextmanager
def _npz(path: str | Path) -> Iterator[Any]:
    """np.load of an npz of named arrays, any malformation raised as a ValueError naming the file.
    A file that is not a zip is refused before np.load, which would offer to unpickle it."""
    require_regular_file(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] not in ZIP_MAGIC:
        what = "one bare array (np.save)" if head == b"\x93NUMPY" else "not a zip archive"
        raise ValueError(f"{path}: not an npz of named arrays (np.savez): {what}")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except _MALFORMED as error:
        if "Object arrays" in str(error):  # numpy's advice is to allow pickles: never here
            raise ValueError(f"{path}: holds object (pickled) arrays; only numeric or text arrays "
                             "are read") from error
        raise ValueError(f"{path}: not a readable npz ({type(error).__name__}: {error})") from error


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    with _npz(path) as data:
        return {key: data[key] for key in data.files}


def open_npz(path: str | Path) -> dict[str, np.ndarray]:
    """An npz's arrays; members stored uncompressed (`write_npz(compress=False)`) come back as
    read-only memory maps, read from disk only where indexed. Others are read whole."""
    arrays: dict[str, np.ndarray] = {}
    with _npz(path) as data, zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        stored = {info.filename.removesuffix(".npy"): info for info in archive.infolist()
                  if info.compress_type == zipfile.ZIP_STORED}
        for key in data.files:
            mapped = _member_memmap(path, f, stored[key].header_offset) if key in stored else None
            arrays[key] = mapped if mapped is not None else data[key]
    return arrays


def _member_memmap(path: str | Path, f: Any, header_offset: int) -> np.memmap | None:
    """The memory map of one stored .npy member whose zip local header starts at `header_offset`;
    None for what a map cannot hold (text, objects, empty arrays): read those whole."""
    f.seek(header_offset + 26)  # the local header's name and extra-field lengths
    name_len, extra_len = struct.unpack("<HH", f.read(4))
    f.seek(header_offset + 30 + name_len + extra_len)
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if any(side < 0 for side in shape):
        raise ValueError(f"a member's header declares a negative size {shape}")
    if dtype.kind in "UOV" or not np.prod(shape):
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                     order="F" if fortran else "C")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
