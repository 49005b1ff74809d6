"""Great Expectations suites and the `validate` stage on tiny data (real GX, one context)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mudjack.io import read_json, write_json, write_npz
from mudjack.metadata import ImageSet, image_table, report_table, tasks_metadata
from stages import validate as stage
from stages.artifacts import VALIDATION
from stages.expectations import (
    GXRunner,
    format_failures,
    validate_all,
    validate_reports,
    validate_tables,
)

CFG = {"max_pixel": 255, "min_rows": 10}
SHAPE = (8, 8, 3)
CLASSES = tuple(range(10))


@pytest.fixture(scope="module")
def runner() -> GXRunner:
    return GXRunner()


def random_images(n: int, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def make_project(root: Path, shadow: np.ndarray | None = None) -> None:
    """params.yaml, a shadow set, one task `digits` and an empty inbox under `root`."""
    params = {
        "paths": {"shadow": "data/shadow.npz", "tasks": "data/tasks", "inbox": "inbox",
                  "encoder": "models/encoder.safetensors", "heads": "models/heads"},
        "validate": CFG,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write_npz(root / "data/shadow.npz", x=random_images(20, 1) if shadow is None else shadow)
    task = root / "data/tasks/digits"
    write_json(task / "task.json",
               {"name": "digits", "classes": list(CLASSES), "input_shape": list(SHAPE)})
    for seed, split in enumerate(("train", "test"), start=2):
        write_npz(task / f"{split}.npz", x=random_images(20, seed), y=np.arange(20) % 10)
    (root / "inbox").mkdir()


def add_report(inbox: Path, name: str, body: object, image: np.ndarray | None = None) -> None:
    if image is not None:
        Image.fromarray(image).save(inbox / f"{name}.png")
    text = body if isinstance(body, str) else json.dumps(body)
    (inbox / f"{name}.json").write_text(text)


def labelled(name: str, x: np.ndarray, y: np.ndarray) -> ImageSet:
    return ImageSet(name, image_table(x, y), SHAPE, CLASSES)


def failed(result: dict) -> set[tuple[str, str | None]]:
    return {(f["expectation"], f["column"]) for f in result["failures"]}


def test_clean_tables_pass(runner: GXRunner) -> None:
    sets = [
        ImageSet("shadow", image_table(random_images(20)), SHAPE, None),
        labelled("digits/train", random_images(20, 1), np.arange(20) % 10),
    ]
    results = validate_tables(sets, CFG, runner)
    assert [r["success"] for r in results] == [True, True]
    assert results[0] == {"table": "shadow", "success": True, "rows": 20, "failures": []}
    assert format_failures(results) == ""


def test_nan_floats_and_wrong_shape_fail(runner: GXRunner) -> None:
    x = random_images(20, shape=(8, 8, 1)).astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    (result,) = validate_tables([ImageSet("shadow", image_table(x), SHAPE, None)], CFG, runner)
    assert not result["success"]
    assert failed(result) == {
        ("expect_column_values_to_be_in_set", "channels"),
        ("expect_column_values_to_be_in_set", "dtype"),
        ("expect_column_values_to_be_in_set", "has_nan"),
    }
    nan = next(f for f in result["failures"] if f["column"] == "has_nan")
    assert nan["unexpected_count"] == 1 and nan["unexpected_examples"] == [True]
    assert nan["unexpected_rows"] == [3]
    text = format_failures([result])
    assert "shadow (20 rows) FAILED" in text
    assert "expect_column_values_to_be_in_set on column 'dtype'" in text
    assert "float32" in text


def test_duplicates_labels_range_and_row_count_fail(runner: GXRunner) -> None:
    x = random_images(8).astype(np.int16)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -1, 300
    x = np.concatenate([x, x[:1]])
    y = np.array([0, 1, 2, 3, 4, 5, 6, 11, 0])
    (result,) = validate_tables([labelled("digits/test", x, y)], CFG, runner)
    assert failed(result) == {
        ("expect_table_row_count_to_be_between", None),
        ("expect_column_values_to_be_unique", "sha256"),
        ("expect_column_values_to_be_in_set", "label"),
        ("expect_column_values_to_be_between", "min"),
        ("expect_column_values_to_be_between", "max"),
        ("expect_column_values_to_be_in_set", "dtype"),
    }
    text = format_failures([result])
    assert "expect_table_row_count_to_be_between on table (min_value=10): observed 9" in text
    assert "expect_column_values_to_be_in_set on column 'label'" in text
    json.dumps(result)  # plain, JSON-safe


def test_malformed_reports_each_rejected(runner: GXRunner, tmp_path: Path) -> None:
    make_project(tmp_path)
    inbox = tmp_path / "inbox"
    ok = random_images(1, 9)[0]
    add_report(inbox, "good", {"id": "good", "task": "digits", "label": 3, "input": "good.png",
                               "predicted": 0, "note": "misclassified"}, ok)
    add_report(inbox, "badjson", "{this is not json")
    add_report(inbox, "nolabel", {"id": "nolabel", "task": "digits", "input": "good.png"})
    add_report(inbox, "unknown", {"id": "unknown", "task": "cifar", "label": 1,
                                  "input": "good.png"})
    add_report(inbox, "outside", {"id": "outside", "task": "digits", "label": 10,
                                  "input": "good.png"})
    (inbox / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    add_report(inbox, "corrupt", {"id": "corrupt", "task": "digits", "label": 1,
                                  "input": "corrupt.png"})
    add_report(inbox, "small", {"id": "small", "task": "digits", "label": 1,
                                "input": "small.png"}, random_images(1, 3, (6, 8, 3))[0])
    tasks = tasks_metadata(tmp_path / "data/tasks")
    verdict = validate_reports(report_table(inbox, tasks), tasks, CFG, runner)
    assert verdict["accepted"] == ["good.json"]
    rejected = verdict["rejected"]
    expected = {
        "badjson": "invalid JSON",
        "nolabel": "expect_column_values_to_not_be_null: label is missing",
        "unknown": "expect_column_values_to_be_in_set: task='cifar' not in ['digits']",
        "outside": "expect_column_values_to_be_in_set: label=10 not in",
        "corrupt": "not a decodable image",
        "small": "expect_column_values_to_be_in_set: height=6 not in [8] (task 'digits')",
    }
    assert set(rejected) == {f"{key}.json" for key in expected}
    for key, reason in expected.items():
        assert any(reason in r for r in rejected[f"{key}.json"]), (key, rejected[f"{key}.json"])
    assert len(rejected["small.json"]) == 1 and len(rejected["outside.json"]) == 1
    assert verdict["codes"] == {"badjson.json": "unreadable", "nolabel.json": "missing_fields",
                                "unknown.json": "unknown_task", "outside.json": "bad_label",
                                "corrupt.json": "undecodable", "small.json": "bad_shape"}


def test_duplicate_report_ids_keyed_by_file(runner: GXRunner, tmp_path: Path) -> None:
    make_project(tmp_path)
    inbox = tmp_path / "inbox"
    body = {"id": "same", "task": "digits", "label": 1, "input": "a.png"}
    add_report(inbox, "a", body, random_images(1)[0])   # claims an id not its file's: bad_id
    add_report(inbox, "same", body)
    (inbox / "same.JSON").write_text(json.dumps(body))  # sorts first, but <id>.json keeps the id
    tasks = tasks_metadata(tmp_path / "data/tasks")
    verdict = validate_reports(report_table(inbox, tasks), tasks, CFG, runner)
    assert verdict["accepted"] == ["same.json"]
    assert verdict["codes"] == {"a.json": "bad_id", "same.JSON": "duplicate_id"}
    assert "already claimed by 'same.json'" in verdict["rejected"]["same.JSON"][0]


def test_an_invalid_report_claims_no_id_or_input(runner: GXRunner, tmp_path: Path) -> None:
    """Only reports that pass every check claim, as in intake: a report with a bad id (or of a
    wrong shape) cannot take a later genuine report's input and get it `conflicting_label`."""
    make_project(tmp_path)
    inbox = tmp_path / "inbox"
    add_report(inbox, "genuine", {"id": "genuine", "task": "digits", "label": 2, "input": "genuine.png"},
               random_images(1)[0])
    add_report(inbox, "_bad", {"id": "_bad", "task": "digits", "label": 1, "input": "genuine.png"})
    small = random_images(1, shape=(4, 4, 3))[0]
    add_report(inbox, "small1", {"id": "small1", "task": "digits", "label": 1, "input": "small1.png"}, small)
    add_report(inbox, "small2", {"id": "small2", "task": "digits", "label": 2, "input": "small1.png"})
    tasks = tasks_metadata(tmp_path / "data/tasks")
    verdict = validate_reports(report_table(inbox, tasks), tasks, CFG, runner)
    assert verdict["accepted"] == ["genuine.json"]
    assert verdict["codes"] == {"_bad.json": "bad_id", "small1.json": "bad_shape", "small2.json": "bad_shape"}


def test_validate_all_without_reports(runner: GXRunner, tmp_path: Path) -> None:
    make_project(tmp_path)
    (tmp_path / "inbox").rmdir()
    paths = {"shadow": tmp_path / "data/shadow.npz", "tasks": tmp_path / "data/tasks",
             "inbox": tmp_path / "inbox"}
    result = validate_all(paths, CFG, runner)
    assert result["passed"]
    assert [t["table"] for t in result["tables"]] == ["shadow", "digits/train", "digits/test"]
    assert result["reports"] == {"accepted": [], "rejected": {}, "codes": {}}


def test_stage_passes_and_lists_rejected_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(tmp_path)
    inbox = tmp_path / "inbox"
    add_report(inbox, "r1", {"id": "r1", "task": "digits", "label": 2, "input": "r1.png"},
               random_images(1, 5)[0])
    add_report(inbox, "r2", {"id": "r2", "task": "digits", "label": 99, "input": "r1.png"})
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 0
    out = read_json(tmp_path / VALIDATION)
    assert out["passed"] is True and len(out["tables"]) == 3
    assert out["reports"]["accepted"] == ["r1.json"] and list(out["reports"]["rejected"]) == ["r2.json"]
    assert "validate: 'r2.json': rejected [bad_label]: " in capsys.readouterr().out


def test_stage_fails_on_bad_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow = random_images(20).astype(np.float64)
    shadow[0, 1, 1, 1] = np.nan
    shadow[5] = shadow[4]
    make_project(tmp_path, shadow=shadow)
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 1
    assert read_json(tmp_path / VALIDATION)["passed"] is False
    err = capsys.readouterr().err
    assert "shadow (20 rows) FAILED" in err
    assert "expect_column_values_to_be_in_set on column 'has_nan'" in err
    assert "expect_column_values_to_be_unique on column 'sha256'" in err
    assert "digits/train" not in err  # only failed tables are listed


def test_stage_fails_on_missing_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(tmp_path)
    (tmp_path / "data/shadow.npz").unlink()
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 1
    assert read_json(tmp_path / VALIDATION)["passed"] is False
    assert "shadow.npz" in capsys.readouterr().err


def _npy_member_with_shape(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose stored `x.npy` declares `shape` in its header (the body: 64 bytes)."""
    import zipfile

    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                         + header.encode() + bytes(64))


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _arrays(path: Path, **changes: np.ndarray | None) -> None:
    """Rewrite the npz at `path` with `changes` (None: drop that array)."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})


# A careless or hostile data file: (which, how, what the message says). Before, each was a
# traceback (EOFError, TypeError, OverflowError, numpy's UFunc error), a hang (a FIFO), advice
# to allow pickles, or a message that did not say which file; bool labels passed silently.
BROKEN = {
    "empty": ("shadow", lambda p: p.write_bytes(b""), "not a zip archive"),
    "np.save": ("shadow", lambda p: np.save(p.open("wb"), random_images(3)), "one bare array (np.save)"),
    "random bytes": ("train", lambda p: p.write_bytes(bytes(range(256)) * 8), "not a zip archive"),
    "fifo": ("train", _fifo, "a FIFO, not a regular file"),
    "negative shape": ("test", lambda p: _npy_member_with_shape(p, (10, -8, 8, 3)), "negative size"),
    "object arrays": ("train", lambda p: np.savez(p, x=np.array([None, 1], dtype=object), y=np.arange(2)),
                      "object (pickled) arrays"),
    "structured pixels": ("shadow", lambda p: _arrays(p, x=random_images(20).view(
        np.dtype([("r", "u1"), ("g", "u1"), ("b", "u1")]))[..., 0]), "pixels must be numbers"),
    "bool labels": ("train", lambda p: _arrays(p, y=np.arange(20) % 2 == 0), "labels must be integers"),
    "float labels": ("test", lambda p: _arrays(p, y=(np.arange(20) % 10).astype(float)),
                     "labels must be integers"),
    "sentences": ("train", lambda p: _arrays(p, x=None, text=np.array([f"s {i}" for i in range(20)])),
                  "holds sentences but task 'digits' is an image task (data/tasks/digits/task.json)"),
    "no inputs": ("shadow", lambda p: _arrays(p, x=None, y=np.arange(20)), "no inputs"),
    "lengths": ("train", lambda p: _arrays(p, y=np.arange(19) % 10), "20 images but 19 labels"),
    "bytes as text": ("shadow", lambda p: _arrays(p, x=None, text=np.array([b"a film"] * 20)),
                      "`text` of dtype |S6: sentences must be a unicode (str) array"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_stage_fails_on_a_malformed_data_file_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    which, breaks, says = BROKEN[case]
    make_project(tmp_path)
    path = Path("data/shadow.npz") if which == "shadow" else Path(f"data/tasks/digits/{which}.npz")
    breaks(tmp_path / path)
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 1
    assert read_json(tmp_path / VALIDATION)["passed"] is False
    err = capsys.readouterr().err
    assert f"validate: cannot read the data: ValueError: {path}: " in err and says in err, err
    assert "allow_pickle" not in err and "Traceback" not in err


def test_a_task_folder_without_task_json_is_named_not_dropped_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project(tmp_path)
    (tmp_path / "data/tasks/parity").mkdir()
    write_npz(tmp_path / "data/tasks/parity/train.npz", x=random_images(20), y=np.arange(20) % 2)
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 0
    assert read_json(tmp_path / VALIDATION)["not_tasks"] == ["parity"]
    assert "validate: data/tasks/parity holds no task.json: not a task, left out" in capsys.readouterr().err


def test_stage_fails_when_there_is_no_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped paths.tasks (an empty folder) made an empty run that every stage passed."""
    make_project(tmp_path)
    (tmp_path / "data/empty").mkdir()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["paths"]["tasks"] = "data/empty"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 1
    assert "no task under 'data/empty' (paths.tasks)" in capsys.readouterr().err


def test_stage_fails_when_the_tasks_are_not_the_size_a_fixed_size_encoder_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """8x8 tasks and a small_cnn built for 16x16 inputs (which does not resize): every model run
    on them would fail, so validation says so in one sentence; built for 8x8, it passes."""
    from mudjack.encoders import get_adapter, save_encoder

    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    for side, code in ((16, 1), (8, 0)):
        adapter = get_adapter("small_cnn", {"input_shape": [side, side, 3], "width": 2, "feature_dim": 4,
                                            "mean": [0.5], "std": [0.25]})
        save_encoder(adapter.build(), adapter, tmp_path / "models" / "encoder.safetensors")
        assert stage.main() == code
    err = capsys.readouterr().err
    assert "task 'digits' holds 8x8x3 images but the encoder (small_cnn) takes 16x16x3" in err


def write_task(root: Path, name: str, classes: list[int], train: np.ndarray, test: np.ndarray) -> None:
    """Task `name` of 8x8 images whose splits hold the labels `train` and `test`."""
    folder = root / "data/tasks" / name
    write_json(folder / "task.json", {"name": name, "classes": classes, "input_shape": list(SHAPE)})
    for seed, (split, y) in enumerate((("train", train), ("test", test)), start=5):
        write_npz(folder / f"{split}.npz", x=random_images(len(y), seed), y=y)


@pytest.mark.parametrize(("classes", "train", "test", "says"), [
    (10, np.arange(20) % 5, np.arange(20) % 10, "no train image has the test label(s) [5, 6, 7, 8, 9]"),
    (10, np.arange(20) % 5, np.arange(20) % 5 + 5, "no train image has the test label(s) [5, 6, 7, 8, 9]"),
    (2, np.zeros(20, int), np.arange(20) % 2, "the train split holds 1 class(es) [0]; a head needs at least"),
], ids=["train_lacks_classes", "disjoint_splits", "one_train_class"])
def test_stage_fails_on_a_task_whose_train_split_cannot_teach_its_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    classes: int, train: np.ndarray, test: np.ndarray, says: str,
) -> None:
    """Every stage passed such a task, with meaningless (or constant) heads."""
    make_project(tmp_path)
    write_task(tmp_path, "t2", list(range(classes)), train, test)
    monkeypatch.chdir(tmp_path)
    assert stage.main() == 1
    err = capsys.readouterr().err
    assert f"validate: cannot read the data: ValueError: data/tasks/t2/train.npz: task 't2': {says}" in err


def test_text_reports_get_the_codes_intake_gives(runner: GXRunner, tmp_path: Path) -> None:
    """Blank text is `empty` (not `too_large`, nor `conflicting_label` with another blank one);
    an input of the other modality than its task's is `bad_shape` (not `bad_dtype`)."""
    make_project(tmp_path)
    toy = tmp_path / "data/tasks/toy"
    write_json(toy / "task.json", {"name": "toy", "classes": [0, 1], "input_shape": [], "modality": "text"})
    inbox = tmp_path / "inbox"
    inputs = {"empty": (b"", "toy", 0), "nbsp": ("\u00a0\u3000".encode(), "toy", 1),
              "spaces": (b"   \n\t", "toy", 1), "nul": (b"\x00" * 10, "toy", 0),
              "sentence": (b"a sentence", "digits", 1), "good": (b"a good sentence", "toy", 1)}
    for name, (data, task, label) in inputs.items():
        (inbox / f"{name}.txt").write_bytes(data)
        add_report(inbox, name, {"id": name, "task": task, "label": label, "input": f"{name}.txt"})
    add_report(inbox, "pixels", {"id": "pixels", "task": "toy", "label": 1, "input": "pixels.png"},
               random_images(1)[0])
    tasks = tasks_metadata(tmp_path / "data/tasks")
    verdict = validate_reports(report_table(inbox, tasks), tasks, CFG, runner)
    assert verdict["accepted"] == ["good.json"]
    blank = dict.fromkeys(["empty.json", "nbsp.json", "nul.json", "spaces.json"], "empty")
    assert verdict["codes"] == {**blank, "sentence.json": "bad_shape", "pixels.json": "bad_shape"}
    assert not any("the same input" in r for r in verdict["rejected"]["spaces.json"])
