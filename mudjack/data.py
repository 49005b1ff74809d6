"""Datasets as uint8 (N, H, W, C) arrays (or, for text, unicode arrays of sentences (N,)),
splits, and report input files.

On disk a set is an npz: images under `x`, sentences under `text` (a numpy unicode array,
read without pickle), labels under `y`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mudjack.io import atomic_path, read_json, read_npz, write_json, write_npz


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


def is_text(x: np.ndarray) -> bool:
    return np.asarray(x).dtype.kind == "U"


def input_arrays(x: np.ndarray) -> dict[str, np.ndarray]:
    """The npz entry of a set's inputs: `text` for sentences, `x` for images."""
    return {"text": x} if is_text(x) else {"x": x}


def read_inputs(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A set's inputs from its npz arrays: `x` (images) or `text` (sentences)."""
    for key in ("x", "text"):
        if key in arrays:
            return arrays[key]
    raise KeyError(f"no inputs (`x` or `text`) among {sorted(arrays)}")


def save_task(task: Task, folder: str | Path) -> None:
    folder = Path(folder)
    write_npz(folder / "train.npz", **input_arrays(task.train.x), y=task.train.y)
    write_npz(folder / "test.npz", **input_arrays(task.test.x), y=task.test.y)
    modality = {"modality": "text"} if is_text(task.train.x) else {}
    write_json(folder / "task.json", {"name": task.name, "classes": task.classes,
                                      "input_shape": list(task.input_shape), **modality})


def load_task(folder: str | Path) -> Task:
    folder = Path(folder)
    meta = read_json(folder / "task.json")
    train, test = read_npz(folder / "train.npz"), read_npz(folder / "test.npz")
    return Task(meta["name"], [int(c) for c in meta["classes"]],
                LabelledSet(read_inputs(train), train["y"]), LabelledSet(read_inputs(test), test["y"]))


def load_tasks(root: str | Path) -> dict[str, Task]:
    """Every task folder (holding a task.json) under `root`, by name."""
    folders = sorted(p.parent for p in Path(root).glob("*/task.json"))
    tasks = [load_task(folder) for folder in folders]
    return {task.name: task for task in tasks}


def load_shadow(path: str | Path) -> np.ndarray:
    return read_inputs(read_npz(path))


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
