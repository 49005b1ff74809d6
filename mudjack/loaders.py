"""Loaders for the data users bring, all returning uint8 (N, H, W, 3) images and labels.

- image class folders (`<root>/<class>/*.jpg|png`), as a directory or a .tgz/.tar/.zip archive;
- npz arrays (`x`/`y`, or `x_<split>`/`y_<split>`);
- MNIST idx files (grey → 3 channels, resized to the encoder's input);
- scikit-learn's digits (the embedded default);
- text: a TSV/CSV table with a header (`sentence`, `label` columns by default), giving
  unicode arrays of sentences (N,) and labels.
"""

from __future__ import annotations

import csv
import gzip
import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from mudjack.config import Count, Params
from mudjack.data import LabelledSet, load_digits_images, stratified_split
from mudjack.io import read_npz

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


class DataSpec(Params):
    """Where a data set comes from and how to shape it."""

    loader: Literal["digits", "image_folders", "npz", "mnist_idx", "tsv"]
    path: str = ""
    split: str = ""     # archive sub-folder, npz key suffix or MNIST file prefix (train/t10k)
    limit: Count = 0    # keep at most this many, stratified by label (0: all)
    resize: int = Field(0, ge=0, le=4096)  # square side in pixels (0: keep the size)
    # text (tsv): column names and the shortest sentence kept, in whitespace-separated words
    text_column: str = "sentence"
    label_column: str = "label"
    min_words: Count = 0


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every image file in a directory, tar(.gz) or zip."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield file.relative_to(path).as_posix(), file.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield name, archive.read(name)
    else:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    yield member.name, archive.extractfile(member).read()


def load_image_folders(path: str | Path, split: str = "") -> tuple[LabelledSet, list[str]]:
    """Images under `<split>/<class>/`; labels index the sorted class names."""
    images, classes = [], []
    for name, data in _archive_members(Path(path)):
        parts = name.split("/")
        if split and split not in parts[:-2]:
            continue
        images.append(_decode(data))
        classes.append(parts[-2])
    if not images:
        raise ValueError(f"{path}: no images found{f' under {split!r}' if split else ''}")
    names = sorted(set(classes))
    labels = np.array([names.index(c) for c in classes], dtype=np.int64)
    return LabelledSet(np.stack(images), labels), names


def load_npz_images(path: str | Path, split: str = "") -> LabelledSet:
    arrays = read_npz(path)
    suffix = f"_{split}" if split else ""
    if f"x{suffix}" not in arrays or f"y{suffix}" not in arrays:
        raise ValueError(f"{path}: needs arrays x{suffix} and y{suffix}, has {sorted(arrays)}")
    x = arrays[f"x{suffix}"]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{path}: x{suffix} must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    return LabelledSet(x, arrays[f"y{suffix}"].astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder}: no {name}(.gz)")


def load_mnist_idx(folder: str | Path, split: str = "t10k") -> LabelledSet:
    """MNIST-format idx files `<split>-images-idx3-ubyte(.gz)` and labels, grey → 3 channels."""
    folder = Path(folder)
    grey = _read_idx(_idx_file(folder, f"{split}-images-idx3-ubyte"))
    labels = _read_idx(_idx_file(folder, f"{split}-labels-idx1-ubyte")).astype(np.int64)
    return LabelledSet(np.repeat(grey[..., None], 3, axis=-1), labels)


def load_tsv(path: str | Path, *, text_column: str = "sentence", label_column: str = "label",
             min_words: int = 0) -> LabelledSet:
    """Sentences and integer labels of a .tsv (tab, unquoted) or .csv (comma, quoted) table.

    Sentences are stripped; empty ones, ones shorter than `min_words` words and repeats
    of an earlier sentence are dropped (duplicates would fail validation's hash check).
    """
    path = Path(path)
    tsv = path.suffix.lower() != ".csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if tsv else ",",
                                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        missing = {text_column, label_column} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}; has {reader.fieldnames}")
        rows = [(row[text_column].strip(), row[label_column]) for row in reader]
    seen: set[str] = set()
    texts, labels = [], []
    for text, label in rows:
        if not text or len(text.split()) < min_words or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(int(label))
    if not texts:
        raise ValueError(f"{path}: no sentence left (min_words={min_words})")
    return LabelledSet(np.array(texts, dtype=np.str_), np.array(labels, dtype=np.int64))


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 (N, H, W, 3) images to size × size."""
    if x.shape[1:3] == (size, size):
        return x
    resized = [np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)) for img in x]
    return np.stack(resized).astype(np.uint8)


def limit_stratified(data: LabelledSet, limit: int, seed: int) -> LabelledSet:
    if not limit or limit >= len(data):
        return data
    keep, _ = stratified_split(data.y, limit / len(data), seed)
    if len(keep) > limit:  # per-class rounding can overshoot by a few
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    return data.subset(keep)


def load_data(spec: DataSpec, seed: int = 0) -> LabelledSet:
    """Load, subsample and resize a data set as its spec says."""
    if spec.loader == "digits":
        data = load_digits_images()
    elif spec.loader == "image_folders":
        data, _ = load_image_folders(spec.path, spec.split)
    elif spec.loader == "npz":
        data = load_npz_images(spec.path, spec.split)
    elif spec.loader == "tsv":
        data = load_tsv(spec.path, text_column=spec.text_column, label_column=spec.label_column,
                        min_words=spec.min_words)
    else:
        data = load_mnist_idx(spec.path, spec.split or "t10k")
    data = limit_stratified(data, spec.limit, seed)
    return LabelledSet(resize_images(data.x, spec.resize), data.y) if spec.resize else data
