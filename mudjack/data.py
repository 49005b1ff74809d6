"""Datasets as uint8 (N, H, W, C) arrays (or, for text, unicode arrays of sentences (N,)),
splits, and report input files.

On disk a set is an npz: images under `x`, sentences under `text` (a numpy unicode array,
read without pickle), labels under `y`. Image sets are stored uncompressed, so loading maps
them (`np.memmap`, read from disk only where indexed) instead of reading them into memory;
loops take them in batches through `batch_rows`, which copies one batch and lets the map's
pages go, so memory stays one batch whatever the size of the set.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mudjack.config import ParamsError
from mudjack.io import atomic_path, open_npz, read_json, require_regular_file, write_json, write_npz
from mudjack.safepath import one_line


@dataclass
class LabelledSet:
    x: np.ndarray  # uint8 (N, H, W, C), or unicode (N,) sentences
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> LabelledSet:
        return LabelledSet(self.x[index], self.y[index])


@dataclass
class Task:
    """A downstream classification task: its classes and its train/test sets."""

    name: str
    classes: list[int]
    train: LabelledSet
    test: LabelledSet

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])


def load_digits_images() -> LabelledSet:
    """scikit-learn's 8×8 digits (0–16 grey levels) as 3-channel uint8 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return LabelledSet(np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int64))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, rest) with `fraction` of every class in `first`."""
    rng = np.random.default_rng(seed)
    first, rest = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(fraction * len(index)))
        first.append(index[:cut])
        rest.append(index[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(rest))


def batch_rows(x: np.ndarray, index: np.ndarray | slice) -> np.ndarray:
    """Rows `index` of a set, copied into memory. Of a memory map, the pages just read are
    released: a mapped file's resident pages count in the process's memory until then."""
    rows = np.array(x[index])
    release_pages(x)
    return rows


def release_pages(x: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (a no-op for in-memory arrays)."""
    mapping = getattr(x, "_mmap", None)  # numpy's own handle on the map of an np.memmap
    if isinstance(mapping, mmap.mmap) and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)


class RowView:
    """Rows `index` of a set, read only when indexed: fancy indexing (`x[index]`) would copy
    them all at once. Offers what batch loops use: len, shape, dtype and indexing."""

    def __init__(self, x: np.ndarray, index: np.ndarray) -> None:
        index = np.asarray(index)
        self.x = x
        self.index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.x.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def ndim(self) -> int:
        return self.x.ndim

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        return batch_rows(self.x, self.index[key])

    def __iter__(self) -> Iterator[np.ndarray]:
        for rows in iter_batches(self, 256):
            yield from rows

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


class ResizedView(RowView):
    """Every row of an image set, resized by `resize` to (H, W, C) `item_shape` as it is read."""

    def __init__(self, x: np.ndarray, resize: Callable[[np.ndarray], np.ndarray],
                 item_shape: tuple[int, ...]) -> None:
        super().__init__(x, np.arange(len(x)))
        self.resize, self.item_shape = resize, tuple(item_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.item_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        return self.resize(super().__getitem__(key))


class StackedView:
    """Several sets of the same item shape as one, rows read only when indexed (in the order
    asked). Offers what batch loops use: len, shape, dtype and indexing."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        shapes = {tuple(part.shape[1:]) for part in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack sets of different item shapes {sorted(shapes)}")
        self.parts = parts
        self.starts = np.cumsum([0, *(len(part) for part in parts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        rows = np.arange(len(self))[key]
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for part in np.unique(which):
            at = np.flatnonzero(which == part)
            out[at] = batch_rows(self.parts[part], rows[at] - self.starts[part])
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


def in_shape(x: np.ndarray, shape: tuple[int, ...], resize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The image set as it is when its items have `shape` (H, W, C), else resized to it as read."""
    return x if tuple(x.shape[1:]) == tuple(shape) else ResizedView(x, resize, shape)


def in_input_space(task: Task, shape: tuple[int, ...], resize: Callable[[np.ndarray], np.ndarray]) -> Task:
    """The task with its images resized (as read, never all at once) to the model's input
    `shape` (H, W, C) when they are of another size; text tasks and same-size tasks as they are."""
    if is_text(task.train.x) or tuple(task.input_shape) == tuple(shape):
        return task
    train, test = (LabelledSet(in_shape(s.x, shape, resize), s.y) for s in (task.train, task.test))
    return Task(task.name, task.classes, train, test)


def iter_batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """The set in consecutive in-memory batches of at most `size` rows."""
    for start in range(0, len(x), size):
        yield batch_rows(x, slice(start, start + size))


def is_text(x: np.ndarray) -> bool:
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # a view is not read for this
    return dtype.kind == "U"


def input_arrays(x: np.ndarray) -> dict[str, np.ndarray]:
    """The npz entry of a set's inputs: `text` for sentences, `x` for images."""
    return {"text": x} if is_text(x) else {"x": x}


def read_inputs(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A set's inputs from its npz arrays: `x` (images) or `text` (sentences)."""
    for key in ("x", "text"):
        if key in arrays:
            return arrays[key]
    raise KeyError(f"no inputs (`x` or `text`) among {sorted(arrays)}")


def write_set(path: str | Path, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """A set as an npz: images uncompressed (loading maps them), sentences compressed."""
    labels = {} if y is None else {"y": y}
    write_npz(path, compress=is_text(x), **input_arrays(x), **labels)


def save_task(task: Task, folder: str | Path) -> None:
    folder = Path(folder)
    write_set(folder / "train.npz", task.train.x, task.train.y)
    write_set(folder / "test.npz", task.test.x, task.test.y)
    modality = {"modality": "text"} if is_text(task.train.x) else {}
    write_json(folder / "task.json", {"name": task.name, "classes": task.classes,
                                      "input_shape": list(task.input_shape), **modality})


def load_task(folder: str | Path) -> Task:
    folder = Path(folder)
    meta = read_task_json(folder / "task.json")
    train, test = open_npz(folder / "train.npz"), open_npz(folder / "test.npz")
    return Task(meta["name"], meta["classes"], LabelledSet(read_inputs(train), np.array(train["y"])),
                LabelledSet(read_inputs(test), np.array(test["y"])))


MAX_CLASSES = 65_536  # the widest head layer (mudjack.config.Width)


def read_task_json(path: Path) -> dict[str, Any]:
    """A task.json, checked for a "name" (string) and "classes" (the class indices 0..n-1, each
    once, in any order: a head's outputs): ValueError naming the file otherwise (a careless file
    gets a sentence, not a KeyError)."""
    require_regular_file(path)
    try:
        meta = read_json(path)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError: say which file
        raise ValueError(f"{path}: not a JSON object ({err})") from err
    except RecursionError:
        raise ValueError(f"{path}: not a JSON object (nested too deeply)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ValueError(f'{path}: needs "name" (the task\'s name, a string)')
    classes = meta.get("classes")
    if not isinstance(classes, list) or not all(type(c) is int for c in classes):  # bool is an int too
        raise ValueError(f'{path}: needs "classes" (a list of integer class indices)')
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise ValueError(f'{path}: "classes" must hold 2 to {MAX_CLASSES} classes (a classifier\'s '
                         f"outputs); got {len(classes)}")
    if sorted(classes) != list(range(len(classes))):
        raise ValueError(f'{path}: "classes" must be the indices 0..n-1 of a head\'s outputs, each '
                         f"once (labels are those indices); got {_brief(classes)}")
    return meta


def _brief(values: list[Any], shown: int = 12) -> str:
    """A list for a message, cut after `shown` items."""
    return str(values) if len(values) <= shown else f"{str(values[:shown])[:-1]}, ... ({len(values)} in all)]"


def task_folders(root: str | Path) -> list[Path]:
    """The sub-folders of `root` holding a task.json (sorted). A missing folder, or one holding
    no task, is an error (a mistyped paths.tasks), not an empty run that every stage passes."""
    if not Path(root).is_dir():
        raise ParamsError(f"tasks folder not found: {one_line(root)!r} (paths.tasks)")
    folders = sorted(p.parent for p in Path(root).glob("*/task.json"))
    if not folders:
        raise ParamsError(f"no task under {one_line(root)!r} (paths.tasks): a task is a folder holding "
                          "task.json, train.npz and test.npz")
    return folders


def load_tasks(root: str | Path) -> dict[str, Task]:
    """Every task folder (holding a task.json) under `root`, by name (`task_folders`)."""
    tasks = [load_task(folder) for folder in task_folders(root)]
    return {task.name: task for task in tasks}


def load_shadow(path: str | Path) -> np.ndarray:
    """The shadow set's inputs; mapped, not read, when stored uncompressed (`write_set`)."""
    return read_inputs(open_npz(path))


def save_image(image: np.ndarray, path: str | Path) -> None:
    """uint8 (H, W, 3) as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG")


def save_text(text: str, path: str | Path) -> None:
    """One sentence as a UTF-8 .txt file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(str(text), encoding="utf-8")


def save_input(raw: np.ndarray, folder: Path, stem: str) -> str:
    """A report's input next to it: `<stem>.txt` for a sentence, `<stem>.png` for an image."""
    name = f"{stem}.txt" if is_text(raw) else f"{stem}.png"
    (save_text if is_text(raw) else save_image)(raw, folder / name)
    return name


def load_image(path: str | Path) -> np.ndarray:
    """A PNG/JPEG image as uint8 (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
