"""Per-sample metadata tables for the `validate` stage (pure pandas; no Great Expectations here).

Inputs
------
Task folders: ``<paths.tasks>/<task>/task.json`` =
``{"name": str, "classes": [int, ...], "input_shape": [H, W, C]}``, plus ``train.npz`` and
``test.npz``, each with ``x`` (uint8, N x H x W x C) and ``y`` (int64, N).
Shadow data: ``paths.shadow`` is an npz with ``x`` only (uint8, N x H x W x C).
Text tasks: task.json adds ``"modality": "text"`` with ``"input_shape": []``; their npz files
(and a text shadow set) hold ``text`` (a unicode array of sentences, N) instead of ``x``, and
their tables have TEXT_COLUMNS (length in characters, word count, blank flag, UTF-8 sha256).

Bug reports: ``<paths.inbox>/<id>.json`` =
``{"id": str, "task": str, "label": int, "input": str, "predicted": int (optional),
"note": str (optional)}`` where ``label`` is the TRUE label of the input and ``input`` is the
file name, relative to the inbox, of a PNG/JPEG image (RGB or L, decoded to uint8 H x W x 3) or
a ``.npy`` array, or for a text task a ``.txt`` sentence; the format and its limits are defined
in `mudjack.reports`, whose reader decodes the inputs here too, so both checks see the same array.

Every report file (``*.json`` in any case) yields one row, readable or not: reading never
raises for one bad report; an unreadable report has ``readable=False``, ``error`` says why and
``code`` names the rule (docs/reports.md). Ids and inputs are claimed in file order
(`mudjack.reports.Claims`) by the reports that pass every check, as intake claims them
(`claim_errors`): a later claimant gets ``duplicate_id`` or ``conflicting_label``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mudjack.data import iter_batches, read_inputs, read_task_json, task_folders
from mudjack.io import open_npz
from mudjack.reports import (
    MAX_IMAGE_PIXELS,
    Claims,
    ReportError,
    decode_input,
    input_path,
    load_report_json,
    report_paths,
    report_stem,
)
from mudjack.safepath import InputError, check_folder_name

IMAGE_COLUMNS = [
    "index", "height", "width", "channels", "dtype", "min", "max", "has_nan", "label", "sha256",
]
REPORT_COLUMNS = [
    "report_id", "file", "task", "label", "input", "readable", "height", "width", "channels",
    "dtype", "min", "max", "has_nan", "sha256", "error", "id_matches_file", "length", "code",
]
TEXT_COLUMNS = ["index", "dtype", "length", "words", "blank", "label", "sha256"]
TEXT_DTYPE = "str"  # the dtype column of sentences, whatever their numpy width (<U12, <U300)
# A report image may be at most this many times larger (in pixels) than the largest task input.
MAX_PIXEL_FACTOR = 16
MAX_SIDE = 65_536  # an input_shape entry: past it, a typo, not an image
TABLE_BYTES = 32 << 20  # image bytes read at a time to build a table


@dataclass(frozen=True)
class TaskSpec:
    name: str
    classes: tuple[int, ...]
    input_shape: tuple[int, ...]    # (H, W, C); () for a text task
    folder: Path
    modality: str = "image"         # "image" | "text"


@dataclass(frozen=True)
class ImageSet:
    """A data table plus what its suite expects: image shape and (for labelled sets) classes."""

    name: str
    frame: pd.DataFrame
    input_shape: tuple[int, ...]
    classes: tuple[int, ...] | None
    modality: str = "image"         # "text": a TEXT_COLUMNS table


def task_metadata(folder: str | Path) -> TaskSpec:
    folder = Path(folder)
    spec = read_task_json(folder / "task.json")
    if spec["name"] != folder.name:
        raise ValueError(f"{folder / 'task.json'}: name {spec['name']!r} != folder name")
    try:  # the name is printed by every stage: no control characters (ESC, CR) in it
        check_folder_name(folder.name, what="the task name")
    except InputError as err:
        raise ValueError(f"{folder / 'task.json'}: {err}") from None
    sides = spec.get("input_shape")
    if not isinstance(sides, list) or not all(type(v) is int and 0 < v <= MAX_SIDE for v in sides):
        raise ValueError(f'{folder / "task.json"}: needs "input_shape" ([H, W, C] of whole numbers '
                         f"1-{MAX_SIDE}, or [] for text)")
    shape = tuple(sides)
    modality = spec.get("modality", "image")
    if modality not in ("image", "text"):
        raise ValueError(f"{folder / 'task.json'}: modality must be image or text, got {modality!r}")
    if len(shape) != (0 if modality == "text" else 3):
        need = "[] for text" if modality == "text" else "[H, W, C]"
        raise ValueError(f"{folder / 'task.json'}: input_shape must be {need}, got {shape}")
    return TaskSpec(spec["name"], tuple(spec["classes"]), shape, folder, modality)


def folders_without_task(tasks_dir: str | Path) -> list[str]:
    """Sub-folders of `tasks_dir` holding no task.json: not tasks, named so none vanishes unsaid."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        return []
    return sorted(p.name for p in tasks_dir.iterdir() if p.is_dir() and not (p / "task.json").exists())


def tasks_metadata(tasks_dir: str | Path) -> dict[str, TaskSpec]:
    """Every sub-folder holding a task.json, by name (sorted; `task_folders` refuses a missing
    or empty tasks folder)."""
    return {f.name: task_metadata(f) for f in task_folders(tasks_dir)}


def image_table(x: np.ndarray, y: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image of `x` (N, H, W, C); a 3-d array counts as one channel.

    Read TABLE_BYTES of images at a time, so a memory-mapped set is never in memory whole."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {x.shape}")
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    rows_per_batch = max(1, TABLE_BYTES // max(1, x[:1].nbytes))
    parts = [_image_rows(rows) for rows in iter_batches(x, rows_per_batch)]
    frame = pd.concat(parts, ignore_index=True) if parts else _image_rows(x[:0])
    frame.insert(0, "index", np.arange(n))
    frame["label"] = pd.Series([None] * n if y is None else np.asarray(y).tolist(), dtype=object)
    return frame[IMAGE_COLUMNS]


def _image_rows(x: np.ndarray) -> pd.DataFrame:
    """Shape, dtype, range, NaN flag and hash of each image of an in-memory batch."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w * c)
    floating = np.issubdtype(x.dtype, np.floating)
    has_nan = np.isnan(flat).any(axis=1) if floating else np.zeros(n, dtype=bool)
    lo, hi = _row_range(flat, has_nan)
    return pd.DataFrame({
        "height": h, "width": w, "channels": c,
        "dtype": str(x.dtype),
        "min": lo, "max": hi,
        "has_nan": has_nan,
        "sha256": [_sha256(img) for img in x],
    }, index=pd.RangeIndex(n))


def _row_range(flat: np.ndarray, has_nan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row min and max ignoring NaN (NaN when a row is all NaN or empty)."""
    if flat.shape[1] == 0:
        nan = np.full(len(flat), np.nan)
        return nan, nan
    if not has_nan.any():
        return flat.min(axis=1), flat.max(axis=1)
    data = flat.astype(np.float64)
    lo = np.where(np.isnan(data), np.inf, data).min(axis=1)
    hi = np.where(np.isnan(data), -np.inf, data).max(axis=1)
    return np.where(np.isinf(lo), np.nan, lo), np.where(np.isinf(hi), np.nan, hi)


def _sha256(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def text_table(x: np.ndarray, y: np.ndarray | None = None) -> pd.DataFrame:
    """One row per sentence of a unicode array `x` (N,)."""
    if x.dtype.kind != "U" or x.ndim != 1:
        raise ValueError(f"sentences must be a unicode array (N,), got {x.dtype} {x.shape}")
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} sentences but {len(y)} labels")
    labels = pd.Series([None] * len(x) if y is None else np.asarray(y).tolist(), dtype=object)
    return pd.DataFrame({
        "index": np.arange(len(x)), "dtype": TEXT_DTYPE,
        "length": [len(s) for s in x], "words": [len(s.split()) for s in x],
        "blank": [not s.strip() for s in x], "label": labels,
        "sha256": [hashlib.sha256(s.encode("utf-8")).hexdigest() for s in x],
    }, columns=TEXT_COLUMNS)


def _data_set(arrays: dict[str, np.ndarray], *, name: str, shape: tuple[int, ...],
              classes: tuple[int, ...] | None, owner: TaskSpec | None) -> ImageSet:
    """An image or text table of one npz (`x` or `text`, with `y` when labelled); `owner` (None:
    either modality) is the task whose modality it must hold. What no expectation could describe
    (sentences in an image task, pixels that are not numbers, labels that are not integers)
    raises ValueError."""
    x, y = read_inputs(arrays), arrays.get("y") if classes is not None else None
    if "x" not in arrays and x.dtype.kind != "U":
        raise ValueError(f"`text` of dtype {x.dtype}: sentences must be a unicode (str) array")
    found = "text" if x.dtype.kind == "U" else "image"
    if owner is not None and owner.modality != found:
        raise ValueError(f"holds {'sentences' if found == 'text' else 'images'} but task {owner.name!r} "
                         f"is a{'n' if owner.modality == 'image' else ''} {owner.modality} task "
                         f"({owner.folder / 'task.json'})")
    if found == "image" and x.dtype.kind not in "biuf":
        raise ValueError(f"images of dtype {x.dtype}: pixels must be numbers (uint8)")
    if y is not None and y.dtype.kind not in "iu":
        raise ValueError(f"labels `y` of dtype {y.dtype}: labels must be integers (class indices)")
    if found == "text":
        return ImageSet(name, text_table(x, y), (), classes, "text")
    return ImageSet(name, image_table(x, y), shape, classes)


def _read_set(path: str | Path, build: Callable[[dict[str, np.ndarray]], ImageSet]) -> ImageSet:
    """`build` of the npz at `path`'s arrays; any problem raised as a ValueError naming the file."""
    arrays = open_npz(path)  # names the file itself
    try:
        return build(arrays)
    except (KeyError, ValueError) as err:  # a KeyError's str() is its repr: take its sentence
        raise ValueError(f"{path}: {err.args[0] if isinstance(err, KeyError) and err.args else err}") from err


def image_sets(shadow: str | Path, tasks: Mapping[str, TaskSpec], *,
               any_size: bool = False) -> list[ImageSet]:
    """The shadow set (shape of the first task, else its own) and each task's train and test.
    With `any_size` (an encoder that resizes its inputs as it reads them) the shadow set's
    height and width are free: only its channels are checked against the first task's."""
    first = next(iter(tasks.values()), None)
    sets = [_read_set(shadow, lambda arrays: _data_set(
        arrays, name="shadow", shape=_shadow_shape(read_inputs(arrays), tasks, any_size), classes=None,
        owner=first))]
    for name, task in tasks.items():
        for split in ("train", "test"):
            build = partial(_data_set, name=f"{name}/{split}", shape=task.input_shape,
                            classes=task.classes, owner=task)
            sets.append(_read_set(task.folder / f"{split}.npz", build))
    return sets


def _shadow_shape(x: np.ndarray, tasks: Mapping[str, TaskSpec], any_size: bool) -> tuple[int, ...]:
    first = next(iter(tasks.values()), None)
    if first is None:
        return tuple(x.shape[1:]) if x.ndim == 4 else (*x.shape[1:], 1)
    return tuple(first.input_shape[2:]) if any_size else tuple(first.input_shape)


def report_table(inbox: str | Path, tasks: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per ``*.json`` in `inbox` (none if it is missing); see the module docstring.

    `tasks` (name -> spec with ``input_shape``) caps the decoded image size at
    MAX_PIXEL_FACTOR times the largest task input, so a hostile PNG cannot exhaust memory.
    """
    inbox = Path(inbox)
    limit = _pixel_limit(tasks or {})
    rows = [_report_row(path, inbox, limit) for path in report_paths(inbox)]
    frame = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    # keep labels as given (ints, text, None): a float column would turn 3 into 3.0
    frame["label"] = pd.Series([r["label"] for r in rows], dtype=object)
    return frame


def _pixel_limit(tasks: Mapping[str, Any]) -> int | None:
    areas = [int(t.input_shape[0]) * int(t.input_shape[1]) for t in tasks.values()
             if len(t.input_shape) == 3]
    return MAX_PIXEL_FACTOR * max(areas) if areas else None


def _report_row(path: Path, inbox: Path, limit: int | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(REPORT_COLUMNS)
    row.update(file=path.name, readable=False)
    try:
        _fill_row(row, path, inbox, limit)
    except ReportError as err:
        row.update(error=str(err), code=err.code)
    except Exception as err:  # whatever else one report breaks is its rejection, not the stage's
        row.update(error=f"{type(err).__name__}: {err}", code="internal")
    return row


def _fill_row(row: dict[str, Any], path: Path, inbox: Path, limit: int | None) -> None:
    report = load_report_json(path)
    row.update(report_id=_text(report.get("id")), task=_text(report.get("task")),
               label=_label(report.get("label")), input=_text(report.get("input")))
    if row["report_id"] is not None:
        row["id_matches_file"] = row["report_id"] == report_stem(path.name)
    img = _load_input(inbox, report.get("input") if row["input"] is not None else None, limit)
    row.update(_text_stats(img) if img.dtype.kind == "U" else _image_stats(img), readable=True)


def claim_errors(frame: pd.DataFrame, passed: Iterable[Any]) -> dict[Any, ReportError]:
    """The claim error of each row of `passed` (indices, in file order, of the reports that
    passed every other check) whose id or input an earlier one of them claimed. Only those
    claim, as in intake: an invalid report cannot take a genuine one's id or input."""
    claims, errors = Claims(), {}
    for i in passed:
        row = frame.loc[i]
        try:
            claims.claim(row["file"], row["report_id"], f"{row['task']}:{row['sha256']}", row["label"])
        except ReportError as err:
            errors[i] = err
    return errors


def _text(value: Any) -> str | None:
    """A JSON string as UTF-8-safe text (a lone surrogate escaped), else None."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else None


def _label(value: Any) -> Any:
    """Ints stay ints; anything else is kept as text so the label check rejects it visibly."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return repr(value)


def _load_input(inbox: Path, name: str | None, limit: int | None) -> np.ndarray:
    """The raw input array, decoded by the report schema's own reader (mudjack.reports)."""
    if name is None:
        raise ReportError("missing_fields", "missing or non-string field 'input'")
    path = input_path(inbox / "report.json", name)
    return decode_input(path, max_pixels=limit or MAX_IMAGE_PIXELS)


def _image_stats(img: np.ndarray) -> dict[str, Any]:
    """Shape, dtype, range (ignoring NaN) and NaN flag of one decoded input (H, W, C)."""
    h, w, c = img.shape
    flat = img.reshape(1, -1)
    has_nan = np.isnan(flat).any(axis=1) if np.issubdtype(img.dtype, np.floating) else np.zeros(1, bool)
    lo, hi = _row_range(flat, has_nan)
    return {
        "height": h, "width": w, "channels": c, "dtype": str(img.dtype),
        "min": lo[0].item(), "max": hi[0].item(), "has_nan": bool(has_nan[0]), "sha256": _sha256(img),
    }


def _text_stats(text: np.ndarray) -> dict[str, Any]:
    """dtype, length in characters and UTF-8 sha256 of one decoded text input (0-d array)."""
    sentence = str(text)
    return {"dtype": TEXT_DTYPE, "length": len(sentence), "has_nan": False,
            "sha256": hashlib.sha256(sentence.encode("utf-8")).hexdigest()}
