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
import math
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from mudjack.config import Count, Params
from mudjack.data import LabelledSet, load_digits_images, stratified_split
from mudjack.io import ArtifactError, read_npz, require_regular_file
from mudjack.safepath import one_line, printable, read_bounded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
MAX_IMAGE_BYTES = 64 << 20  # one image file; a bigger one is skipped, not read
MAX_LABEL = 2**31 - 1       # far past any class count, and int64 holds it
# What PIL, zipfile and tarfile raise on one damaged image or archive member.
BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error,
             Image.DecompressionBombError, tarfile.TarError, zipfile.BadZipFile)


class LoaderError(ArtifactError):
    """A data source that cannot be loaded as its spec says: one line naming the file and why."""


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


def _require_file(path: Path) -> None:
    """LoaderError unless `path` is a regular file: opening a FIFO would wait forever."""
    try:
        require_regular_file(path)
    except FileNotFoundError as err:
        raise LoaderError(f"{one_line(path)}: {err.strerror}") from None
    except (OSError, ValueError) as err:  # ValueError names the path and what it is
        raise LoaderError(one_line(err)) from None


def _check_labels(low: int, high: int, where: str) -> None:
    if low < 0 or high > MAX_LABEL:
        bad = low if low < 0 else high
        raise LoaderError(f"{where}: labels must be class indices 0..{MAX_LABEL}, got {bad}")


def _class_indices(y: np.ndarray, count: int, where: str) -> np.ndarray:
    """`y` as int64 labels, one per input: float labels or a count that differs are refused,
    not cast or cut to fit."""
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise LoaderError(f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != count:
        raise LoaderError(f"{where}: {len(y)} labels for {count} inputs")
    if len(y):
        _check_labels(int(y.min()), int(y.max()), where)
    return y.astype(np.int64)


def _rgb(img: Image.Image) -> Image.Image:
    """`img` in 8-bit RGB. 16-bit grey (PNG's I;16, and PGM's I, which PIL scales to 0..65535)
    keeps its top 8 bits: convert("RGB") would clip it to 0 or 255."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 0xFFFF):
            raise ValueError(f"{img.mode} pixels beyond 16 bits ({grey.min()}..{grey.max()})")
        return Image.fromarray((grey >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise ValueError("floating-point pixels; save the image with 8 or 16 bits")
    return img.convert("RGB")


def _decode(data: bytes, size: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) pixels, size × size when `size` (resized here, before any stacking)."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise ValueError("not an image PIL can read") from None
    with img:
        rgb = _rgb(img)
    if size and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _archive_members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, reader of its bytes) of every image file in a directory, tar(.gz) or zip. Only
    regular files are read (a FIFO is refused, not waited on); a reader's error costs its
    file only."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES and not file.is_dir():
                yield file.relative_to(path).as_posix(), partial(read_bounded, file, MAX_IMAGE_BYTES)
        return
    _require_file(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda info: info.filename):
                if info.filename.lower().endswith(IMAGE_SUFFIXES):
                    yield info.filename, _bounded(info.file_size, partial(archive.read, info))
    elif tarfile.is_tarfile(path):
        yield from _tar_members(path)
    else:
        raise LoaderError(f"{one_line(path)}: not an image folder, a zip or a tar archive")


def _tar_members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    yield member.name, _bounded(member.size, archive.extractfile(member).read)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:  # cut off mid-way
        raise LoaderError(f"{one_line(path)}: a damaged tar archive ({one_line(err)})") from None


def _bounded(size: int, read: Callable[[], bytes]) -> Callable[[], bytes]:
    """`read`, refused unread when the archive says its member is over MAX_IMAGE_BYTES (zipfile
    and tarfile never return more than the size they declare)."""
    def checked() -> bytes:
        if size > MAX_IMAGE_BYTES:
            raise ValueError(f"{size} bytes; the limit is {MAX_IMAGE_BYTES}")
        return read()
    return checked


def _image(parts: list[str], read: Callable[[], bytes], size: int) -> np.ndarray:
    if len(parts) < 2:
        raise ValueError("not in a class folder (<class>/<image>)")
    return _decode(read(), size)


def _stack(images: list[np.ndarray], names: list[str], root: Path) -> np.ndarray:
    """One array of same-sized images; a size that differs names its file (set `resize`)."""
    def side(image: np.ndarray) -> str:
        return f"{image.shape[1]}x{image.shape[0]}"

    for image, name in zip(images, names, strict=True):
        if image.shape != images[0].shape:
            raise LoaderError(f"{one_line(root)}: {printable(name)} is {side(image)} pixels (width x "
                              f"height), {printable(names[0])} {side(images[0])}: images must share "
                              "a size (set `resize`)")
    return np.stack(images)


def load_image_folders(path: str | Path, split: str = "", *,
                       size: int = 0) -> tuple[LabelledSet, list[str]]:
    """Images under `<split>/<class>/`, resized to size × size as read when `size`; labels
    index the sorted class names. An image that cannot be read is skipped, named on stderr
    and counted; a source with none left is refused."""
    root = Path(path)
    images, classes, names, skipped = [], [], [], 0
    for name, read in _archive_members(root):
        parts = name.split("/")
        if split and split not in parts[:-2]:
            continue
        try:
            images.append(_image(parts, read, size))
        except BAD_IMAGE as err:
            skipped += 1
            print(f"{one_line(root)}: skipped {printable(name)}: {one_line(err)}", file=sys.stderr)
            continue
        classes.append(parts[-2])
        names.append(name)
    if skipped:
        print(f"{one_line(root)}: {skipped} of {skipped + len(images)} images skipped", file=sys.stderr)
    if not images:
        where = f" under {split!r}" if split else ""
        unread = f" ({skipped} unreadable)" if skipped else ""
        raise LoaderError(f"{one_line(root)}: no images found{where}{unread}")
    labels = sorted(set(classes))
    y = np.array([labels.index(c) for c in classes], dtype=np.int64)
    return LabelledSet(_stack(images, names, root), y), labels


def load_npz_images(path: str | Path, split: str = "") -> LabelledSet:
    path = Path(path)
    _require_file(path)
    try:
        arrays = read_npz(path)
    except (OSError, ValueError) as err:
        raise LoaderError(one_line(err)) from None
    suffix = f"_{split}" if split else ""
    if f"x{suffix}" not in arrays or f"y{suffix}" not in arrays:
        raise LoaderError(f"{one_line(path)}: needs arrays x{suffix} and y{suffix}, has {sorted(arrays)}")
    x = arrays[f"x{suffix}"]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise LoaderError(f"{one_line(path)}: x{suffix} must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    return LabelledSet(x, _class_indices(arrays[f"y{suffix}"], len(x), f"{one_line(path)}: y{suffix}"))


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array; a short or long file is refused, not reshaped."""
    _require_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise LoaderError(f"{one_line(path)}: unreadable ({one_line(err)})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise LoaderError(f"{one_line(path)}: not an unsigned-byte idx file")
    start = 4 + 4 * data[3]
    shape = tuple(int.from_bytes(data[i:i + 4], "big") for i in range(4, start, 4))
    if len(data) != start + math.prod(shape):
        raise LoaderError(f"{one_line(path)}: {max(len(data) - start, 0)} bytes of data; "
                          f"its header's shape {shape} needs {math.prod(shape)}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.exists():
            return candidate
    raise LoaderError(f"{one_line(folder)}: no {name}(.gz)")


def load_mnist_idx(folder: str | Path, split: str = "t10k") -> LabelledSet:
    """MNIST-format idx files `<split>-images-idx3-ubyte(.gz)` and labels, grey → 3 channels."""
    folder = Path(folder)
    images = _idx_file(folder, f"{split}-images-idx3-ubyte")
    grey = _read_idx(images)
    if grey.ndim != 3:
        raise LoaderError(f"{one_line(images)}: images must be (N, rows, cols), got {grey.shape}")
    labels = _idx_file(folder, f"{split}-labels-idx1-ubyte")
    y = _class_indices(_read_idx(labels), len(grey), one_line(labels))
    return LabelledSet(np.repeat(grey[..., None], 3, axis=-1), y)


def _label(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise LoaderError(f"{where}: label {printable(text)} is not an integer") from None
    _check_labels(value, value, where)
    return value


def _rows(reader: csv.DictReader, text_column: str, label_column: str,
          path: str) -> list[tuple[str, int]]:
    missing = {text_column, label_column} - set(reader.fieldnames or [])
    if missing:
        raise LoaderError(f"{path}: no column(s) {sorted(missing)}; has {reader.fieldnames}")
    rows = []
    for row in reader:
        text, label = row[text_column], row[label_column]
        where = f"{path}: line {reader.line_num}"
        if text is None or label is None:
            raise LoaderError(f"{where}: a cell is missing ({text_column!r} or {label_column!r})")
        rows.append((text.strip(), _label(label, where)))
    return rows


def _read_table(path: Path, text_column: str, label_column: str) -> list[tuple[str, int]]:
    """(sentence, label) of every row: a row with a missing cell, a label that is not a class
    index or a field over csv's limit refuses the table, naming its line."""
    _require_file(path)
    where = one_line(path)
    tsv = path.suffix.lower() != ".csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",",
                                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            try:
                return _rows(reader, text_column, label_column, where)
            except csv.Error as err:
                raise LoaderError(f"{where}: line {reader.line_num + 1}: {one_line(err)}") from None
    except UnicodeDecodeError as err:
        raise LoaderError(f"{where}: not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise LoaderError(f"{where}: {err.strerror or err}") from None


def load_tsv(path: str | Path, *, text_column: str = "sentence", label_column: str = "label",
             min_words: int = 0) -> LabelledSet:
    """Sentences and integer labels of a .tsv (tab, unquoted) or .csv (comma, quoted) table.

    Sentences are stripped; empty ones, ones shorter than `min_words` words and repeats
    of an earlier sentence are dropped (duplicates would fail validation's hash check).
    """
    seen: set[str] = set()
    texts, labels = [], []
    for text, label in _read_table(Path(path), text_column, label_column):
        if not text or len(text.split()) < min_words or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    if not texts:
        raise LoaderError(f"{one_line(path)}: no sentence left (min_words={min_words})")
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
        data, _ = load_image_folders(spec.path, spec.split, size=spec.resize)
    elif spec.loader == "npz":
        data = load_npz_images(spec.path, spec.split)
    elif spec.loader == "tsv":
        data = load_tsv(spec.path, text_column=spec.text_column, label_column=spec.label_column,
                        min_words=spec.min_words)
    else:
        data = load_mnist_idx(spec.path, spec.split or "t10k")
    data = limit_stratified(data, spec.limit, seed)
    return LabelledSet(resize_images(data.x, spec.resize), data.y) if spec.resize else data
