import gzip
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from mudjack.loaders import (
    DataSpec,
    LoaderError,
    load_data,
    load_image_folders,
    load_mnist_idx,
    load_npz_images,
    load_tsv,
    resize_images,
)
from stages import INPUT_ERRORS


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


def test_a_loader_error_is_one_of_the_errors_a_stage_reports_in_one_line():
    assert issubclass(LoaderError, INPUT_ERRORS) and issubclass(LoaderError, ValueError)


def test_mixed_sizes_are_resized_one_by_one_or_the_odd_file_is_named(folders):
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(folders / "train" / "cat" / "odd.png")
    spec = DataSpec(loader="image_folders", path=str(folders), resize=4)
    assert load_data(spec).x.shape == (7, 4, 4, 3)
    with pytest.raises(LoaderError, match=r"odd\.png' is 8x9 pixels .* must share a size"):
        load_image_folders(folders)


@pytest.mark.timeout(30)  # a FIFO read would wait for a writer forever
def test_unreadable_images_are_skipped_named_and_counted(folders, capsys):
    (folders / "train" / "cat" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    (folders / "train" / "ant" / "text.png").write_text("hello")
    os.mkfifo(folders / "train" / "ant" / "pipe.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folders / "loose.png")
    data, names = load_image_folders(folders)
    assert len(data) == 6 and names == ["ant", "cat"]
    err = capsys.readouterr().err
    for fragment in ("junk.jpg", "text.png", "'pipe.png' is a FIFO", "'loose.png': not in a class",
                     "4 of 10 images skipped"):
        assert fragment in err, err


def test_a_source_with_no_readable_image_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_text("not an image")
    with pytest.raises(LoaderError, match="no images found .1 unreadable"):
        load_image_folders(tmp_path)


def test_a_missing_path_or_an_archive_of_random_bytes_is_refused(tmp_path):
    with pytest.raises(LoaderError, match="nope: No such file"):
        load_image_folders(tmp_path / "nope")
    (tmp_path / "r.tgz").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(LoaderError, match="r.tgz: not an image folder, a zip or a tar archive"):
        load_image_folders(tmp_path / "r.tgz")


def test_sixteen_bit_grey_keeps_its_top_eight_bits_not_clipped(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4), 30000, np.uint16)).save(tmp_path / "a" / "png16.png")  # I;16
    header = b"P5\n4 4\n65535\n"  # PIL reads a 16-bit PGM as mode I
    (tmp_path / "a" / "pgm16.ppm").write_bytes(header + np.full(16, 30000, ">u2").tobytes())
    data, _ = load_image_folders(tmp_path)
    assert (data.x == 30000 >> 8).all()


def test_npz_labels_must_be_integers_one_per_image(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    for y, problem in ((np.array([0.6, 1.6, 0.6, 1.6]), "1-D integer array, got float64"),
                       (np.arange(2), "2 labels for 4 inputs"), (np.array([0, -1, 1, 0]), "got -1")):
        np.savez(tmp_path / "d.npz", x=x, y=y)
        with pytest.raises(LoaderError, match=problem):
            load_npz_images(tmp_path / "d.npz")


def test_idx_files_cut_short_or_of_another_count_are_refused(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 4, 4)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(2))
    with pytest.raises(LoaderError, match="labels-idx1-ubyte.gz: 2 labels for 3 inputs"):
        load_mnist_idx(tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[:-5])
    with pytest.raises(LoaderError, match=r"images-idx3-ubyte.gz: 43 bytes of data.*needs 48"):
        load_mnist_idx(tmp_path)


MALFORMED_ROWS = [("a b\tpositive\n", "line 3: label 'positive' is not an integer"),
                  ("a b\n", "line 3: a cell is missing"),
                  ("a b\t" + "9" * 23 + "\n", "line 3: labels must be class indices"),
                  ("x" * 200_000 + "\t1\n", "line 3: field larger than field limit")]


@pytest.mark.parametrize(("row", "problem"), MALFORMED_ROWS, ids=["word", "cell", "digits", "field"])
def test_a_malformed_table_row_refuses_the_table_naming_its_line(row, problem, tmp_path):
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nfine\t0\n" + row)
    with pytest.raises(LoaderError, match=f"t.tsv: {problem}"):
        load_tsv(tmp_path / "t.tsv")
