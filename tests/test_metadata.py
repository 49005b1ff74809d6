"""Metadata tables: per-image rows, task folders and robust bug-report reading (no GX here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mudjack.config import ParamsError
from mudjack.io import write_json, write_npz
from mudjack.metadata import (
    IMAGE_COLUMNS,
    REPORT_COLUMNS,
    image_sets,
    image_table,
    report_table,
    tasks_metadata,
)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)


@pytest.fixture
def tasks_dir(tmp_path: Path, images: np.ndarray) -> Path:
    folder = tmp_path / "tasks" / "digits"
    spec = {"name": "digits", "classes": list(range(10)), "input_shape": [8, 8, 3]}
    write_json(folder / "task.json", spec)
    labels = np.arange(20, dtype=np.int64) % 10
    write_npz(folder / "train.npz", x=images, y=labels)
    write_npz(folder / "test.npz", x=images[:12], y=labels[:12])
    return tmp_path / "tasks"


def write_report(inbox: Path, name: str, body: object) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    text = body if isinstance(body, str) else json.dumps(body)
    (inbox / f"{name}.json").write_text(text)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_image_table_rows(images: np.ndarray) -> None:
    y = np.arange(20) % 10
    table = image_table(images, y)
    assert list(table.columns) == IMAGE_COLUMNS
    assert len(table) == 20
    row = table.iloc[3]
    assert (row["height"], row["width"], row["channels"]) == (8, 8, 3)
    assert row["dtype"] == "uint8" and not row["has_nan"]
    assert row["min"] == images[3].min() and row["max"] == images[3].max()
    assert row["label"] == 3 and isinstance(row["label"], int)
    assert table["sha256"].is_unique and len(row["sha256"]) == 64


def test_image_table_unlabelled_and_duplicates(images: np.ndarray) -> None:
    table = image_table(np.concatenate([images, images[:2]]))
    assert table["label"].isna().all()
    assert table["sha256"].duplicated().sum() == 2


def test_image_table_float_nan() -> None:
    x = np.ones((3, 2, 2, 1), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    x[1] = np.nan
    table = image_table(x)
    assert table["has_nan"].tolist() == [True, True, False]
    assert table["dtype"].iloc[0] == "float32"
    assert table["min"].iloc[0] == 1.0 and np.isnan(table["max"].iloc[1])


def test_image_table_shapes() -> None:
    assert image_table(np.zeros((2, 5, 6), np.uint8))["channels"].tolist() == [1, 1]
    assert image_table(np.zeros((0, 8, 8, 3), np.uint8)).empty
    with pytest.raises(ValueError, match="N, H, W, C"):
        image_table(np.zeros((2, 5), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        image_table(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3))


def test_load_tasks_and_image_sets(tmp_path: Path, tasks_dir: Path, images: np.ndarray) -> None:
    tasks = tasks_metadata(tasks_dir)
    assert list(tasks) == ["digits"]
    assert tasks["digits"].input_shape == (8, 8, 3) and tasks["digits"].classes == tuple(range(10))
    write_npz(tmp_path / "shadow.npz", x=images)
    sets = image_sets(tmp_path / "shadow.npz", tasks)
    assert [s.name for s in sets] == ["shadow", "digits/train", "digits/test"]
    assert sets[0].classes is None and sets[0].input_shape == (8, 8, 3)
    assert len(sets[2].frame) == 12


def test_shadow_of_another_size_is_checked_by_channels_only_for_a_resizing_encoder(
        tmp_path: Path, tasks_dir: Path) -> None:
    tasks = tasks_metadata(tasks_dir)
    write_npz(tmp_path / "shadow.npz", x=np.zeros((4, 16, 16, 3), np.uint8))
    fixed = image_sets(tmp_path / "shadow.npz", tasks)[0]
    resized = image_sets(tmp_path / "shadow.npz", tasks, any_size=True)[0]
    assert fixed.input_shape == (8, 8, 3)  # a fixed-size encoder: the task's shape, all three checked
    assert resized.input_shape == (3,) and resized.frame["height"].tolist() == [16] * 4


def test_load_tasks_rejects_misnamed(tmp_path: Path) -> None:
    write_json(tmp_path / "t" / "a" / "task.json",
               {"name": "b", "classes": [0, 1], "input_shape": [2, 2, 3]})
    with pytest.raises(ValueError, match="folder name"):
        tasks_metadata(tmp_path / "t")
    with pytest.raises(ParamsError, match="tasks folder not found"):
        tasks_metadata(tmp_path / "missing")


def test_a_task_name_with_control_characters_is_refused(tmp_path: Path) -> None:
    """Every stage prints task names: `d<ESC>[2J<CR>FORGED` cleared the terminal and forged a line."""
    name = "d\x1b[2J\rFORGED"
    write_json(tmp_path / "t" / name / "task.json",
               {"name": name, "classes": [0, 1], "input_shape": [2, 2, 3]})
    with pytest.raises(ValueError, match="the task name 'd.*' holds NUL or control characters"):
        tasks_metadata(tmp_path / "t")


def test_every_stage_reader_refuses_a_missing_or_empty_tasks_folder(tmp_path: Path) -> None:
    """retrain, export, patch and intake read the tasks with load_tasks; on a mistyped paths.tasks
    they exited 0 doing nothing (retrain replaced models/heads with an empty folder)."""
    from mudjack.data import load_tasks

    (tmp_path / "empty" / "not-a-task").mkdir(parents=True)
    with pytest.raises(ParamsError, match="tasks folder not found: .*missing.* \\(paths.tasks\\)"):
        load_tasks(tmp_path / "missing")
    with pytest.raises(ParamsError, match="no task under"):
        load_tasks(tmp_path / "empty")


@pytest.mark.parametrize(("spec", "says"), [
    ({"classes": [0], "input_shape": [2, 2, 3]}, '"name"'),
    ({"name": "a", "classes": ["cat", "dog"], "input_shape": [2, 2, 3]}, '"classes"'),
    ({"name": "a", "classes": [0, True], "input_shape": [2, 2, 3]}, '"classes"'),
    ({"name": "a", "classes": [0, 1]}, '"input_shape"'),
    # a traceback (int() of a list), or cut / parsed silently (8.9 -> 8, "8" -> 8), or no size
    *[({"name": "a", "classes": [0, 1], "input_shape": shape}, '"input_shape"')
      for shape in ([[8], 8, 3], [8.9, 8, 3], ["8", "8", "3"], [0, 8, 3], [8, -8, 3], [8, 8, True])],
    ([1, 2], '"name"'),
])
def test_a_careless_task_json_is_refused_with_a_sentence_naming_it(tmp_path: Path, spec, says: str) -> None:
    """Both readers of task.json (the validate stage's and the stages' load_tasks) say which
    file and which field, where they raised a bare KeyError or int() error before."""
    from mudjack.data import load_task

    write_json(tmp_path / "t" / "a" / "task.json", spec)
    with pytest.raises(ValueError, match=f"task.json: needs {says}"):
        tasks_metadata(tmp_path / "t")
    if says != '"input_shape"':  # load_task does not read the shape
        with pytest.raises(ValueError, match=f"task.json: needs {says}"):
            load_task(tmp_path / "t" / "a")
    (tmp_path / "t" / "a" / "task.json").write_text("{")
    with pytest.raises(ValueError, match="task.json: not a JSON object"):
        tasks_metadata(tmp_path / "t")


@pytest.mark.parametrize("classes", [[0, 2, 5], [0, 0, 1], [1, 2, 3], list(range(9)) + [20]])
def test_task_classes_must_be_the_head_indices_each_once(tmp_path: Path, classes: list[int]) -> None:
    """Labels index a head's outputs: classes [0, 2, 5] passed validation and crashed retrain's
    cross entropy (target 5 out of bounds); a duplicate made an 11-class task of 10 classes."""
    task_json = tmp_path / "t" / "a" / "task.json"
    write_json(task_json, {"name": "a", "classes": classes, "input_shape": [2, 2, 3]})
    with pytest.raises(ValueError, match=r'task.json: "classes" must be the indices 0..n-1'):
        tasks_metadata(tmp_path / "t")
    write_json(task_json, {"name": "a", "classes": [2, 0, 1], "input_shape": [2, 2, 3]})
    assert tasks_metadata(tmp_path / "t")["a"].classes == (2, 0, 1)  # any order


@pytest.mark.parametrize("count", [1, 65_537])
def test_a_task_has_2_to_65536_classes(tmp_path: Path, count: int) -> None:
    """One class has nothing to classify; 200,000 stalled the GX suite (a value set that long)."""
    write_json(tmp_path / "t" / "a" / "task.json",
               {"name": "a", "classes": list(range(count)), "input_shape": [2, 2, 3]})
    with pytest.raises(ValueError, match=f'"classes" must hold 2 to 65536 classes .*got {count}'):
        tasks_metadata(tmp_path / "t")


def test_a_task_json_nested_too_deeply_is_refused_in_a_sentence(tmp_path: Path) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "t" / "a" / "task.json").write_text('{"name": "a", "x": ' + deep + "}")
    with pytest.raises(ValueError, match="task.json: not a JSON object .nested too deeply."):
        tasks_metadata(tmp_path / "t")


def test_a_task_json_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    os.mkfifo(tmp_path / "t" / "a" / "task.json")
    with pytest.raises(ValueError, match="task.json: a FIFO, not a regular file"):
        tasks_metadata(tmp_path / "t")


def test_report_table_reads_valid_and_bad(tmp_path: Path, tasks_dir: Path) -> None:
    inbox = tmp_path / "inbox"
    rgb = np.full((8, 8, 3), 7, np.uint8)
    save_png(inbox / "ok.png", rgb)
    save_png(inbox / "gray.png", np.full((8, 8), 9, np.uint8), mode="L")
    save_png(inbox / "rgba.png", np.zeros((8, 8, 4), np.uint8))
    save_png(inbox / "huge.png", np.zeros((300, 300, 3), np.uint8))
    (inbox / "junk.png").write_bytes(b"definitely not a png")
    Image.fromarray(rgb).save(inbox / "photo.jpg")
    good = {"task": "digits", "label": 1, "predicted": 0, "note": "x"}
    write_report(inbox, "ok", {**good, "id": "ok", "input": "ok.png"})
    write_report(inbox, "gray", {**good, "id": "gray", "input": "gray.png"})
    write_report(inbox, "rgba", {**good, "id": "rgba", "input": "rgba.png"})
    write_report(inbox, "huge", {**good, "id": "huge", "input": "huge.png"})
    write_report(inbox, "junk", {**good, "id": "junk", "input": "junk.png"})
    write_report(inbox, "jpeg", {**good, "id": "jpeg", "input": "photo.jpg"})
    write_report(inbox, "gone", {**good, "id": "gone", "input": "nope.png"})
    write_report(inbox, "escape", {**good, "id": "escape", "input": "../tasks/digits/task.json"})
    write_report(inbox, "noinput", {**good, "id": "noinput"})
    write_report(inbox, "textlabel", {**good, "id": "textlabel", "label": "3", "input": "ok.png"})
    write_report(inbox, "broken", "{not json")
    write_report(inbox, "list", [1, 2])
    table = report_table(inbox, tasks_metadata(tasks_dir))
    assert list(table.columns) == REPORT_COLUMNS and len(table) == 12
    table = table.set_index("file")
    ok = table.loc["ok.json"]
    assert ok["readable"] and pd.isna(ok["error"]) and ok["report_id"] == "ok"
    assert (ok["height"], ok["width"], ok["channels"], ok["min"], ok["max"]) == (8, 8, 3, 7, 7)
    assert ok["label"] == 1 and ok["dtype"] == "uint8"
    assert table.loc["gray.json", "readable"] and table.loc["gray.json", "channels"] == 3
    assert table.loc["textlabel.json", "label"] == "'3'"
    errors = {
        "rgba.json": "mode RGBA", "huge.json": "too large", "junk.json": "not a decodable image",
        "jpeg.json": "not PNG", "gone.json": "not found", "escape.json": "outside the inbox",
        "noinput.json": "'input'", "broken.json": "invalid JSON", "list.json": "not an object",
    }
    for file, reason in errors.items():
        assert not table.loc[file, "readable"], file
        assert reason in table.loc[file, "error"], (file, table.loc[file, "error"])
    assert pd.isna(table.loc["broken.json", "report_id"])


def test_report_table_missing_inbox(tmp_path: Path) -> None:
    table = report_table(tmp_path / "nowhere", {})
    assert table.empty and list(table.columns) == REPORT_COLUMNS
