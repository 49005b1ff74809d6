import gzip
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from mudjack.loaders import (
    DataSpec,
    load_data,
    load_image_folders,
    load_mnist_idx,
    load_npz_images,
    resize_images,
)


@pytest.fixture
def folders(tmp_path):
    """train/<class>/*.png for two classes, 3 images each."""
    rng = np.random.default_rng(0)
    for label in ("cat", "ant"):
        folder = tmp_path / "tree" / "train" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "tree"


def test_image_folders_from_a_directory_a_tgz_and_a_zip(folders, tmp_path):
    with tarfile.open(tmp_path / "tree.tgz", "w:gz") as archive:
        archive.add(folders, arcname=".")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        for file in folders.rglob("*.png"):
            archive.write(file, file.relative_to(folders).as_posix())
    for source in (folders, tmp_path / "tree.tgz", tmp_path / "tree.zip"):
        data, names = load_image_folders(source, split="train")
        assert names == ["ant", "cat"]
        assert data.x.shape == (6, 6, 6, 3) and data.x.dtype == np.uint8
        assert sorted(np.bincount(data.y)) == [3, 3]


def test_image_folders_split_that_does_not_exist_is_an_error(folders):
    with pytest.raises(ValueError, match="no images"):
        load_image_folders(folders, split="test")


def test_npz_with_split_keys_and_a_clear_error_for_bad_arrays(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(4))
    assert len(load_npz_images(tmp_path / "d.npz", "train")) == 4
    with pytest.raises(ValueError, match="needs arrays x_test"):
        load_npz_images(tmp_path / "d.npz", "test")
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32), y=np.arange(4))
    with pytest.raises(ValueError, match="uint8"):
        load_npz_images(tmp_path / "f.npz")


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_becomes_three_channel_and_resizes(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    data = load_mnist_idx(tmp_path)
    assert data.x.shape == (5, 28, 28, 3) and (data.x[..., 0] == images).all()
    spec = DataSpec(loader="mnist_idx", path=str(tmp_path), split="t10k", resize=32)
    assert load_data(spec).x.shape == (5, 32, 32, 3)


def test_digits_limit_is_stratified():
    data = load_data(DataSpec(loader="digits", limit=100))
    assert len(data) == 100 and set(data.y) == set(range(10))


def test_resize_keeps_uint8():
    x = np.full((2, 8, 8, 3), 200, np.uint8)
    out = resize_images(x, 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8 and (out == 200).all()
