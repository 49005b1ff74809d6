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

import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from mudjack.io import sha256_bytes
from mudjack.safepath import InputError, entries, has_suffix, inside, printable, read_bounded

MAX_JSON_BYTES = 64 << 10
MAX_INPUT_BYTES = 4 << 20
MAX_IMAGE_PIXELS = 1 << 22    # decoding cap when no task tells the expected size
MAX_PIXEL = 255
MAX_DIGITS = 18               # longest integer literal in a report JSON (fits int64)
MAX_NPY_HEADER = 10_000       # bytes of a .npy header (numpy's own default cap)
REPORT_SUFFIX = ".json"       # matched in any case
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


# A report that cannot be used: `code` names the rule (docs/reports.md), the message says why.
# The same class as the path rule's errors, so one `except` sees every refusal.
ReportError = InputError


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
    def input_hash(self) -> str:
        """Hash of the input a report is about (task and pixels, not the label)."""
        return sha256_bytes(json.dumps([self.task, list(self.image.shape)]).encode() + self.image.tobytes())

    @property
    def content_hash(self) -> str:
        """Hash of what the report claims: task, label and input; equal hashes are one report."""
        head = json.dumps([self.task, self.label, list(self.image.shape)]).encode()
        return sha256_bytes(head + self.image.tobytes())


# --------------------------------------------------------------------------- metadata


def report_stem(name: str) -> str:
    """A report file's name without its `.json` suffix (any case): what its id must be."""
    return name[:-len(REPORT_SUFFIX)] if has_suffix(name, REPORT_SUFFIX) else name


def load_report_json(path: str | Path) -> dict[str, Any]:
    """A report file's JSON object: bounded read (a regular file only), integers of at most
    MAX_DIGITS digits, nesting within the parser's recursion limit."""
    path = Path(path)
    data = read_bounded(path, MAX_JSON_BYTES)
    try:
        meta = json.loads(data.decode("utf-8"), parse_int=_bounded_int, object_pairs_hook=_once_each)
    except ReportError:
        raise
    except RecursionError as err:
        raise ReportError("too_deep", f"report JSON {printable(path.name)} is nested too deep") from err
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReportError("unreadable", f"unreadable report JSON {printable(path.name)}: "
                                        f"invalid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ReportError("unreadable", f"report JSON {printable(path.name)} is not an object")
    return meta


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys come once each: Python's last-wins would take the second of two
    "label"s without a word, and which one the reporter meant is anybody's guess."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ReportError("bad_field", f"the key {printable(key)} is given twice")
        seen.add(key)
    return dict(pairs)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ReportError("bad_field", f"a number of {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def report_metadata(path: str | Path) -> dict[str, Any]:
    """The report JSON, with required fields present and every known field of its type."""
    path = Path(path)
    meta = load_report_json(path)
    missing = [key for key in REQUIRED_FIELDS if meta.get(key) is None]
    if missing:
        raise ReportError("missing_fields", f"missing fields: {', '.join(missing)}")
    for key, kind in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if meta.get(key) is not None and not _is_type(meta[key], kind):
            raise ReportError("bad_field", f"field {key!r} must be {kind.__name__}, "
                                           f"got {printable(meta[key])}")
    _check_id(meta["id"], path)
    return meta


def _is_type(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _check_id(report_id: str, path: Path) -> None:
    if not re.fullmatch(ID_PATTERN, report_id):
        raise ReportError("bad_id", f"id {printable(report_id)} does not match {ID_PATTERN}")
    if report_id != report_stem(path.name):
        raise ReportError("bad_id", f"id {printable(report_id)} differs from the file name "
                                    f"{printable(path.name)} (need <id>.json)")


def check_task(meta: Mapping[str, Any], tasks: Mapping[str, TaskSchema]) -> TaskSchema:
    """The report's task, which must be known and hold its label."""
    if meta["task"] not in tasks:
        raise ReportError("unknown_task", f"unknown task {printable(meta['task'])}; known: {sorted(tasks)}")
    task = tasks[meta["task"]]
    if meta["label"] not in task.classes:
        raise ReportError("bad_label", f"label {meta['label']} is not a class of task "
                                       f"{printable(meta['task'])}")
    return task


# --------------------------------------------------------------------------- input


def input_path(report_path: Path, name: str) -> Path:
    """The input file a report names, which must lie inside the report's folder (the path
    rule of mudjack.safepath: no `..`, links only inside, a regular file when read)."""
    return inside(report_path.parent, name)


def decode_input(path: Path, shape: Sequence[int] | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The input's raw array (H, W, C): images decoded to uint8 RGB, arrays as stored (in
    native byte order).

    The file is read once, bounded (mudjack.safepath); with `shape`, an image of another size
    is refused from its header, before decoding.
    """
    data = read_bounded(path, MAX_INPUT_BYTES)
    suffix = path.suffix.lower()
    if suffix == ARRAY_SUFFIX:
        return _decode_array(data, path.name)
    if suffix == TEXT_SUFFIX:
        return _decode_text(data, path.name)
    return _decode_image(data, path.name, shape, max_pixels)  # any other name: a PNG, judged by content


def _decode_text(data: bytes, name: str) -> np.ndarray:
    """A UTF-8 sentence as a 0-d unicode array, surrounding whitespace stripped."""
    if len(data) > MAX_TEXT_BYTES:
        raise ReportError("too_large", f"text input {printable(name)} is {len(data)} bytes; "
                                       f"the limit is {MAX_TEXT_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError("undecodable", f"input {printable(name)} is not UTF-8 text: {err}") from err
    return np.array(text.strip(), dtype=np.str_)


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _decode_array(data: bytes, name: str) -> np.ndarray:
    """A .npy array: its header (shape x itemsize) checked against the size limit before
    anything is allocated; object arrays refused (they need pickle); byte order made native."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        shape, fortran, dtype = NPY_HEADERS[version](stream, max_header_size=MAX_NPY_HEADER)
    except Exception as err:  # hostile bytes: any parser failure is this input's
        raise ReportError("undecodable", f"input {printable(name)} is not a decodable .npy array: "
                                         f"{type(err).__name__}: {err}") from err
    if dtype.hasobject:
        raise ReportError("undecodable", f"input {printable(name)} cannot be read without pickle "
                                         "(an object array)")
    native = dtype.newbyteorder("=")
    if dtype.kind not in ARRAY_KINDS or native.name not in ARRAY_DTYPES:
        raise ReportError("bad_dtype", f"input {printable(name)} has dtype {dtype}; need integers or floats")
    if len(shape) != 3 or min(shape) < 0:
        raise ReportError("bad_shape", f"input {printable(name)} has shape {shape}; need (H, W, C)")
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize > MAX_INPUT_BYTES:
        raise ReportError("too_large", f"input {printable(name)} declares {shape} {dtype}: "
                                       f"over {MAX_INPUT_BYTES} bytes")
    if count * dtype.itemsize > len(data) - stream.tell():
        raise ReportError("undecodable", f"input {printable(name)} is truncated: its header "
                                         f"declares {shape} {dtype}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C").astype(native)


def _decode_image(data: bytes, name: str, shape: Sequence[int] | None, max_pixels: int) -> np.ndarray:
    # Pillow raises many kinds for hostile bytes (OSError, ValueError for inflating chunks,
    # DecompressionBombError, SyntaxError, struct.error): each is this input's failure.
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # a header declaring a gigantic image
        raise ReportError("too_large", f"input {printable(name)} is too large: {err}") from err
    except Exception as err:
        raise ReportError("undecodable", f"input {printable(name)} is not a decodable image: "
                                         f"{type(err).__name__}: {err}") from err
    with image:
        if image.format != IMAGE_FORMAT:
            raise ReportError("bad_format", f"input {printable(name)} is {image.format}, not {IMAGE_FORMAT}")
        _check_image_header(image, name, shape, max_pixels)
        if getattr(image, "n_frames", 1) > 1:  # which frame the reporter saw is unknown
            raise ReportError("bad_format", f"input {printable(name)} is an animation of "
                                            f"{image.n_frames} frames; send one image")
        try:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except Exception as err:  # truncated or corrupt pixel data, bombs in late chunks
            raise ReportError("undecodable", f"input {printable(name)} is not a decodable image: "
                                             f"{type(err).__name__}: {err}") from err


def _check_image_header(image: Image.Image, name: str, shape: Sequence[int] | None,
                        max_pixels: int) -> None:
    """Size and mode from the header, before any pixel is decoded."""
    if image.mode not in IMAGE_MODES:
        raise ReportError("bad_shape", f"input {name!r} has mode {image.mode}; need one of {IMAGE_MODES}")
    if shape is not None and len(shape) < 2:  # a text task's shape is ()
        raise ReportError("bad_shape", f"input {name!r} is an image; the task takes sentences (.txt)")
    if shape is not None and (image.height, image.width) != tuple(shape[:2]):
        raise ReportError("bad_shape", f"input {name!r} is {image.height}x{image.width}; "
                                       f"the task's inputs are {shape[0]}x{shape[1]}")
    if image.width * image.height > max_pixels:
        raise ReportError("too_large", f"input {name!r} is {image.width}x{image.height}: too large "
                                       f"(more than {max_pixels} pixels)")


def check_input(array: np.ndarray, shape: Sequence[int], name: str = "input") -> np.ndarray:
    """Shape, NaN and range checks of a decoded input; returns it as uint8."""
    if array.shape != tuple(shape) or (array.size == 0 and array.dtype.kind != "U"):
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
    name = f"input {printable(source.name)}"
    if resize is not None and raw.dtype.kind != "U":
        raw = resize(check_input(raw, (*raw.shape[:2], *(shape or raw.shape)[2:]), name))
    image = check_input(raw, raw.shape if shape is None else shape, name)
    return BugReport(meta["id"], meta["task"], meta["label"], image, path, meta.get("predicted"))


def report_paths(inbox: str | Path) -> list[Path]:
    """Every report file of `inbox` (`*.json`, any case), sorted by name: the file order in
    which ids and inputs are claimed (`Claims`). Of files differing only in the suffix's case,
    the canonical `<id>.json` comes first, so `X.JSON` cannot take the id of `X.json`."""
    return sorted(entries(inbox, REPORT_SUFFIX), key=_claim_order)


def _claim_order(path: Path) -> tuple[str, bool, str]:
    return report_stem(path.name), not path.name.endswith(REPORT_SUFFIX), path.name


class Claims:
    """First come, first kept, in file order: an id belongs to the first report file that
    claims it (`duplicate_id` for a later one), and an input (task and pixels) keeps the
    label of its first report (`conflicting_label` for a later one saying otherwise)."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}                  # id -> file
        self.inputs: dict[str, tuple[str, Any]] = {}   # input hash -> (file, label)

    def claim(self, file: str, report_id: str, input_hash: str, label: Any) -> None:
        owner = self.ids.setdefault(report_id, file)
        if owner != file:
            raise ReportError("duplicate_id", f"id {printable(report_id)} is already claimed by "
                                              f"{printable(owner)}")
        first, first_label = self.inputs.setdefault(input_hash, (file, label))
        if first_label != label:
            raise ReportError("conflicting_label", f"the same input is reported by {printable(first)} "
                                                   f"with label {first_label}, here with {label}")
