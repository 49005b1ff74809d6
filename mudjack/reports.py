"""Bug reports as clients send them, and the schema every report must pass.

Format
------
One report is ``<inbox>/<id>.json`` (at most MAX_JSON_BYTES) next to the input file it names::

    {"id": "r-0001", "task": "digits", "label": 3, "input": "r-0001.png",
     "predicted": 0, "note": "free text"}

===========  ========  ========================================================================
field        type      rule
===========  ========  ========================================================================
id           str       1-64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit;
                       equal to the JSON file's name without ``.json``
task         str       the name of a known downstream task
label        int       the input's TRUE label; one of the task's classes
input        str       a file name inside the inbox: a PNG image (RGB or L) or ``.npy`` (an
                       array, read without pickle); at most MAX_INPUT_BYTES;
                       for a text task a ``.txt`` sentence (UTF-8, at most MAX_TEXT_BYTES)
predicted    int       optional: the class the client saw
note         str       optional: free text
===========  ========  ========================================================================

The input, decoded, must have the task's input shape (H, W, C) (an L image counts as
3 channels), except for an encoder that resizes its inputs (`resizes_inputs`, e.g. hf_vision):
then any height and width is taken and resized to the model's input first. An array may be
of any integer or float dtype but every value must be finite and within [0, MAX_PIXEL];
floats are rounded to uint8. A text input decodes to a 0-d unicode array (a text task's
input shape is ()) and must not be blank. Each rule has its own error code
(`ReportError.code`), so the intake log says exactly what was wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from mudjack.io import sha256_bytes

MAX_JSON_BYTES = 64 << 10
MAX_INPUT_BYTES = 4 << 20
MAX_IMAGE_PIXELS = 1 << 22    # decoding cap when no task tells the expected size
MAX_PIXEL = 255
REQUIRED_FIELDS: dict[str, type] = {"id": str, "task": str, "label": int, "input": str}
OPTIONAL_FIELDS: dict[str, type] = {"predicted": int, "note": str}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IMAGE_FORMAT = "PNG"          # lossless only: JPEG would alter the very pixels a trigger is made of
ARRAY_SUFFIX = ".npy"
TEXT_SUFFIX = ".txt"
MAX_TEXT_BYTES = 16 << 10
ARRAY_KINDS = "uif"           # numpy dtype kinds accepted in .npy inputs: unsigned, signed, float
ARRAY_DTYPES = tuple(f"{kind}{bits}" for kind, sizes in
                     (("uint", (8, 16, 32, 64)), ("int", (8, 16, 32, 64)), ("float", (16, 32, 64)))
                     for bits in sizes)
IMAGE_MODES = ("RGB", "L")


class ReportError(ValueError):
    """A report that cannot be used; `code` names the rule, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TaskSchema(Protocol):
    """What the schema needs of a task (mudjack.data.Task and metadata.TaskSpec both fit)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def classes(self) -> Sequence[int]: ...


@dataclass
class BugReport:
    id: str
    task: str
    label: int
    image: np.ndarray  # uint8 (H, W, C)
    path: Path | None
    predicted: int | None = None

    @property
    def sha256(self) -> str:
        """Hash of the input pixels."""
        return sha256_bytes(self.image.tobytes())

    @property
    def content_hash(self) -> str:
        """Hash of what the report claims: task, label and input; equal hashes are one report."""
        head = json.dumps([self.task, self.label, list(self.image.shape)]).encode()
        return sha256_bytes(head + self.image.tobytes())


# --------------------------------------------------------------------------- metadata


def report_metadata(path: str | Path) -> dict[str, Any]:
    """The report JSON, with required fields present and every known field of its type."""
    path = Path(path)
    _check_size(path, MAX_JSON_BYTES, "report JSON")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError("unreadable", f"unreadable report JSON {path.name}: invalid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ReportError("unreadable", f"report JSON {path.name} is not an object")
    missing = [key for key in REQUIRED_FIELDS if meta.get(key) is None]
    if missing:
        raise ReportError("missing_fields", f"missing fields: {', '.join(missing)}")
    for key, kind in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if meta.get(key) is not None and not _is_type(meta[key], kind):
            raise ReportError("bad_field", f"field {key!r} must be {kind.__name__}, got {meta[key]!r}")
    _check_id(meta["id"], path)
    return meta


def _is_type(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _check_id(report_id: str, path: Path) -> None:
    if not re.fullmatch(ID_PATTERN, report_id):
        raise ReportError("bad_id", f"id {report_id!r} does not match {ID_PATTERN}")
    if path.suffix == ".json" and report_id != path.stem:
        raise ReportError("bad_id", f"id {report_id!r} differs from the file name {path.name!r}")


def check_task(meta: Mapping[str, Any], tasks: Mapping[str, TaskSchema]) -> TaskSchema:
    """The report's task, which must be known and hold its label."""
    if meta["task"] not in tasks:
        raise ReportError("unknown_task", f"unknown task {meta['task']!r}; known: {sorted(tasks)}")
    task = tasks[meta["task"]]
    if meta["label"] not in task.classes:
        raise ReportError("bad_label", f"label {meta['label']} is not a class of task {meta['task']!r}")
    return task


# --------------------------------------------------------------------------- input


def input_path(report_path: Path, name: str) -> Path:
    """The input file a report names, which must lie inside the report's folder."""
    inbox = report_path.parent.resolve()
    path = (inbox / name).resolve()
    if not path.is_relative_to(inbox) or path == inbox:
        raise ReportError("bad_input", f"input {name!r} points outside the inbox")
    if not path.is_file():
        raise ReportError("bad_input", f"input file {name!r} not found")
    return path


def decode_input(path: Path, shape: Sequence[int] | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The input's raw array (H, W, C): images decoded to uint8 RGB, arrays as stored.

    With `shape`, an image of another size is refused from its header, before decoding.
    """
    _check_size(path, MAX_INPUT_BYTES, "input file")
    suffix = path.suffix.lower()
    if suffix == ARRAY_SUFFIX:
        return _decode_array(path)
    if suffix == TEXT_SUFFIX:
        return _decode_text(path)
    return _decode_image(path, shape, max_pixels)  # any other name: a PNG, judged by content


def _decode_text(path: Path) -> np.ndarray:
    """A UTF-8 sentence as a 0-d unicode array, surrounding whitespace stripped."""
    _check_size(path, MAX_TEXT_BYTES, "text input")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError("undecodable", f"input {path.name!r} is not UTF-8 text: {err}") from err
    return np.array(text.strip(), dtype=np.str_)


def _decode_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle: refused
        raise ReportError("undecodable", f"input {path.name!r} cannot be read without pickle: {err}") from err
    except (OSError, EOFError) as err:
        raise ReportError("undecodable", f"input {path.name!r} is not a decodable .npy array: {err}") from err
    if not isinstance(array, np.ndarray) or array.dtype.kind not in ARRAY_KINDS:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise ReportError("bad_dtype", f"input {path.name!r} has dtype {dtype}; need integers or floats")
    if array.ndim != 3:
        raise ReportError("bad_shape", f"input {path.name!r} has shape {array.shape}; need (H, W, C)")
    return array


def _decode_image(path: Path, shape: Sequence[int] | None, max_pixels: int) -> np.ndarray:
    try:
        image = Image.open(path)
    except (OSError, Image.DecompressionBombError) as err:
        raise ReportError("undecodable", f"input {path.name!r} is not a decodable image: {err}") from err
    with image:
        if image.format != IMAGE_FORMAT:
            raise ReportError("bad_format", f"input {path.name!r} is {image.format}, not {IMAGE_FORMAT}")
        _check_image_header(image, path.name, shape, max_pixels)
        try:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as err:  # truncated or corrupt pixel data
            raise ReportError("undecodable", f"input {path.name!r} is not a decodable image: {err}") from err


def _check_image_header(image: Image.Image, name: str, shape: Sequence[int] | None,
                        max_pixels: int) -> None:
    """Size and mode from the header, before any pixel is decoded."""
    if image.mode not in IMAGE_MODES:
        raise ReportError("bad_shape", f"input {name!r} has mode {image.mode}; need one of {IMAGE_MODES}")
    if shape is not None and (image.height, image.width) != tuple(shape[:2]):
        raise ReportError("bad_shape", f"input {name!r} is {image.height}x{image.width}; "
                                       f"the task's inputs are {shape[0]}x{shape[1]}")
    if image.width * image.height > max_pixels:
        raise ReportError("too_large", f"input {name!r} is {image.width}x{image.height}: too large "
                                       f"(more than {max_pixels} pixels)")


def check_input(array: np.ndarray, shape: Sequence[int], name: str = "input") -> np.ndarray:
    """Shape, NaN and range checks of a decoded input; returns it as uint8."""
    if array.shape != tuple(shape):
        raise ReportError("bad_shape", f"{name} has shape {array.shape}; the task's is {tuple(shape)}")
    if array.dtype.kind == "U":
        if not str(array).strip():
            raise ReportError("empty", f"{name} is blank text")
        return array
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ReportError("nan", f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    low, high = array.min(), array.max()
    if low < 0 or high > MAX_PIXEL:
        raise ReportError("out_of_range", f"{name} values span [{low}, {high}]; need [0, {MAX_PIXEL}]")
    return np.rint(array).astype(np.uint8)


def _check_size(path: Path, limit: int, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ReportError("unreadable", f"cannot read {what} {path.name!r}: {err}") from err
    if size > limit:
        raise ReportError("too_large", f"{what} {path.name!r} is {size} bytes; the limit is {limit}")


# --------------------------------------------------------------------------- reports


def read_report(path: str | Path, tasks: Mapping[str, TaskSchema] | None = None, *,
                resize: Callable[[np.ndarray], np.ndarray] | None = None) -> BugReport:
    """A report that passes the whole schema (task checks only when `tasks` is given).

    With `resize` (the encoder's `resize_raw`), an image of any height and width is taken and
    resized to the model's input before the shape check; without, it must have the task's size.
    """
    path = Path(path)
    meta = report_metadata(path)
    task = check_task(meta, tasks) if tasks is not None else None
    source = input_path(path, meta["input"])
    shape = tuple(task.input_shape) if task is not None else None
    raw = decode_input(source, None if resize else shape)
    if resize is not None and raw.dtype.kind != "U":
        raw = resize(check_input(raw, (*raw.shape[:2], *(shape or raw.shape)[2:]), f"input {source.name!r}"))
    image = check_input(raw, raw.shape if shape is None else shape, f"input {source.name!r}")
    return BugReport(meta["id"], meta["task"], meta["label"], image, path, meta.get("predicted"))


def report_paths(inbox: str | Path) -> list[Path]:
    inbox = Path(inbox)
    return sorted(inbox.glob("*.json")) if inbox.is_dir() else []
