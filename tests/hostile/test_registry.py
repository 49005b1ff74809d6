"""A damaged bug registry: every bug folder is checked when read (`load_bugs`) and against the
tasks and encoder of the stage (`check_bugs`); each problem is one RegistryError naming the file,
never a traceback, a hang on a FIFO, or a repair trained on garbage. A missing registry is an
error (intake always writes one); an empty one is a repair with nothing to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mudjack.bugs import Bug, RegistryError, check_bugs, load_bugs, save_bug
from mudjack.data import LabelledSet, Task
from mudjack.encoders import EncoderAdapter, get_adapter
from mudjack.triggers import TextTrigger, patch_trigger, stamp
from tests.hostile.generate import ADAPTER, SHAPE, build_workspace

ROOT = Path(__file__).resolve().parents[2]
Mutation = Callable[[Path], Any]
pytestmark = pytest.mark.timeout(60, method="thread")  # a FIFO waited on would hang the test


def image_bug() -> Bug:
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    square = patch_trigger(SHAPE, 2, 1, 1)
    return Bug("bug-a", "digits", 5, 0, stamp(image, square), image, square, record={"iou": 1.0},
               alternates=(patch_trigger(SHAPE, 3, 4, 4),))


def text_bug() -> Bug:
    return Bug("t1", "sst", 1, 0, np.array("the movie was good cf"), np.array("the film was bad"),
               TextTrigger(("cf",)))


BUGS = {"image": image_bug, "text": text_bug}


# --------------------------------------------------------------------------- mutations


def edit_record(change: Callable[[dict], Any]) -> Mutation:
    def mutate(folder: Path) -> None:
        record = json.loads((folder / "record.json").read_text())
        change(record)
        (folder / "record.json").write_text(json.dumps(record))
    return mutate


def edit_arrays(change: Callable[[dict], Any]) -> Mutation:
    def mutate(folder: Path) -> None:
        with np.load(folder / "arrays.npz") as data:
            arrays = dict(data)
        change(arrays)
        np.savez(folder / "arrays.npz", **arrays)
    return mutate


def put(key: str, value: np.ndarray) -> Mutation:
    return edit_arrays(lambda arrays: arrays.__setitem__(key, value))


def drop(key: str) -> Mutation:
    return edit_arrays(lambda arrays: arrays.pop(key))


def replace(name: str, make: Callable[[Path], Any]) -> Mutation:
    """`name` removed and `make(path)` put in its place."""
    def mutate(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)
    return mutate


def write(name: str, body: str | bytes) -> Mutation:
    write = Path.write_bytes if isinstance(body, bytes) else Path.write_text
    return replace(name, lambda path: write(path, body))


def set_fields(**values: Any) -> Mutation:
    return edit_record(lambda record: record.update(values))


def label_nan(folder: Path) -> None:
    path = folder / "record.json"
    path.write_text(path.read_text().replace('"label": 5', '"label": NaN'))


def bare_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


EMPTY_MASK = np.zeros(SHAPE[:2], np.uint8)
R, A = "record.json", "arrays.npz"
RECORD = {  # name: (mutation, fragment of the message)
    "missing id": (edit_record(lambda r: r.pop("id")), 'no "id" field'),
    "missing task": (edit_record(lambda r: r.pop("task")), 'no "task" field'),
    "a list": (write(R, "[1, 2]"), "not a JSON object but a list"),
    "empty": (write(R, ""), "not valid JSON"),
    "truncated": (write(R, '{"id": "bug-a", "ta'), "not valid JSON"),
    "random bytes": (write(R, b"\xff\xfe\x00\x81junk"), "not valid JSON"),
    "100,000 deep": (write(R, "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "over the limit": (lambda f: os.truncate(f / R, (16 << 20) + 1), "the limit is"),
    "label a string": (set_fields(label="abc"), '"label" must be an integer'),
    "label NaN": (label_nan, '"label" must be an integer, got float'),
    "label true": (set_fields(label=True), "got bool"),
    "predicted negative": (set_fields(predicted=-1), "class indices"),
    "predicted its label": (edit_record(lambda r: r.update(predicted=r["label"])), "is its \"label\""),
    "id of another folder": (set_fields(id="../../evil"), "not the name of its folder"),
    "a directory": (replace(R, Path.mkdir), "a directory, not a regular file"),
    "a FIFO": (replace(R, os.mkfifo), "a FIFO, not a regular file"),
    "a link to /dev/zero": (replace(R, lambda p: p.symlink_to("/dev/zero")), "character device"),
    "missing": (lambda f: (f / R).unlink(), "not found"),
}
ARRAYS = {
    "missing": (lambda f: (f / A).unlink(), "missing"),
    "truncated": (lambda f: os.truncate(f / A, 100), "not a readable npz"),
    "a directory": (replace(A, Path.mkdir), "a directory, not a regular file"),
    "a FIFO": (replace(A, os.mkfifo), "a FIFO, not a regular file"),
    "pickled": (replace(A, lambda p: np.savez(p, bug=np.array([{}], dtype=object))), "pickled"),
    "a bare .npy": (replace(A, bare_npy), "one bare array"),
    "no bug": (drop("bug"), "no bug array"),
    "no reference": (drop("reference"), "no reference array"),
    "no mask": (drop("mask"), "no mask array"),
    "alternate without pattern": (drop("alt0_pattern"), "no alt0_pattern array"),
    "bug float NaN": (put("bug", np.full(SHAPE, np.nan, np.float32)), "got float32"),
    "bug int32 -5000": (put("bug", np.full(SHAPE, -5000, np.int32)), "got int32"),
    "bug complex": (put("bug", np.ones(SHAPE, np.complex64)), "got complex64"),
    "bug bool": (put("bug", np.ones(SHAPE, bool)), "got bool"),
    "bug 2-d": (put("bug", np.zeros(SHAPE[:2], np.uint8)), "of shape (8, 8)"),
    "reference another shape": (put("reference", np.zeros((16, 16, 3), np.uint8)), "of the bug's shape"),
    "mask empty": (put("mask", EMPTY_MASK), "mask is empty"),
    "alternate mask empty": (put("alt0_mask", EMPTY_MASK), "alt0_mask is empty"),
    "mask not 0/1": (put("mask", np.full(SHAPE[:2], 5, np.uint8)), "mask must be 0/1"),
    "mask of another size": (put("mask", np.ones((4, 4), bool)), "a trigger is a mask (H, W)"),
    "trigger of another size": (edit_arrays(lambda a: a.update(mask=np.ones((16, 16), np.uint8),
                                                               pattern=np.zeros((16, 16, 3), np.uint8))),
                                "pattern is (16, 16, 3)"),
    "an unknown array": (put("alt5_mask", EMPTY_MASK), "beside the image trigger: ['alt5_mask']"),
}
TEXT = {
    "words empty": (put("words", np.array([], dtype=np.str_)), "one or more single words"),
    "words 2-d": (put("words", np.array([["a", "b"]])), "1-d unicode"),
    "position unknown": (put("position", np.array("middle")), "position 'middle'"),
    "bug numeric": (put("bug", np.array([1.0, 2.0])), "must be one sentence"),
    "bug empty": (put("bug", np.array("")), "a sentence of 1 to"),
    "with an image alternate": (put("alt0_mask", EMPTY_MASK), "unexpected arrays beside the text trigger"),
}
CASES = {f"{group} {name}": (kind, mutate, file, fragment)  # name: (bug kind, mutation, file named, fragment)
         for group, kind, file, cases in (("record", "image", R, RECORD), ("arrays", "image", A, ARRAYS),
                                          ("text", "text", A, TEXT))
         for name, (mutate, fragment) in cases.items()}


@pytest.mark.parametrize(("kind", "mutate", "file", "fragment"), CASES.values(), ids=list(CASES))
def test_a_damaged_bug_is_one_registry_error_naming_the_file(tmp_path: Path, kind: str, mutate: Mutation,
                                                            file: str, fragment: str) -> None:
    bug = BUGS[kind]()
    save_bug(bug, tmp_path / "bugs")
    folder = tmp_path / "bugs" / bug.id
    assert load_bugs(tmp_path / "bugs")  # as intake wrote it, it loads
    mutate(folder)
    with pytest.raises(RegistryError) as caught:
        load_bugs(tmp_path / "bugs")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(folder / file)) and fragment in message, message


def test_a_registry_must_exist_and_an_empty_one_holds_no_bug(tmp_path: Path) -> None:
    registry = tmp_path / "bugs"
    with pytest.raises(RegistryError, match="bugs: the bug registry is missing: run intake first"):
        load_bugs(registry)
    registry.write_text("x")
    with pytest.raises(RegistryError, match="is not a folder: run intake first"):
        load_bugs(registry)
    registry.unlink()
    registry.mkdir()
    (registry / "_intake_log.jsonl").write_text("")
    (registry / "notes.txt").write_text("files beside the bug folders are not bugs")
    assert load_bugs(registry) == []
    (registry / "stray").mkdir()  # a folder is a bug: one without its record is damaged
    with pytest.raises(RegistryError, match="stray/record.json"):
        load_bugs(registry)


# --------------------------------------------------------------------------- against the stage's


def task(classes: int = 10, shape: tuple[int, ...] = SHAPE) -> Task:
    part = LabelledSet(np.zeros((2, *shape), np.uint8), np.zeros(2, np.int64))
    return Task("digits", list(range(classes)), part, part)


@pytest.fixture(scope="module")
def adapter() -> EncoderAdapter:
    return get_adapter("small_cnn", ADAPTER)


MISFITS = {  # name: (bug, tasks, fragment)
    "an unknown task": (image_bug(), {"other": task()}, "names task 'digits', not one of the tasks here"),
    "a label beyond the classes": (image_bug(), {"digits": task(classes=3)}, "task 'digits' (0 to 2)"),
    "another image size": (image_bug(), {"digits": task(shape=(16, 16, 3))}, "takes (16, 16, 3)"),
    "a text bug for an image encoder": (
        text_bug(), {"sst": task()}, "a bug with text inputs, but the encoder takes image inputs"),
}


@pytest.mark.parametrize(("bug", "tasks", "fragment"), MISFITS.values(), ids=list(MISFITS))
def test_a_bug_that_does_not_fit_the_tasks_or_encoder_is_refused(
        adapter: EncoderAdapter, bug: Bug, tasks: dict[str, Task], fragment: str) -> None:
    with pytest.raises(RegistryError) as caught:
        check_bugs([bug], tasks, registry="bugs", adapter=adapter)
    assert str(caught.value).startswith(f"bugs/{bug.id}: ") and fragment in str(caught.value)


def test_a_fitting_bug_passes(adapter: EncoderAdapter) -> None:
    check_bugs([image_bug()], {"digits": task()}, registry="bugs", adapter=adapter)


def test_an_image_bug_for_a_text_encoder_is_refused(tiny_bert: Path) -> None:
    text_adapter = get_adapter("hf_text", {"folder": str(tiny_bert), "max_length": 32})
    with pytest.raises(RegistryError, match="a bug with image inputs, but the encoder takes text inputs"):
        check_bugs([image_bug()], {"digits": task()}, registry="bugs", adapter=text_adapter)


# --------------------------------------------------------------------------- the patch stage


def run_stage(stage: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_patch_stops_with_one_line_without_a_registry_or_with_a_damaged_bug(tmp_path: Path) -> None:
    """No registry was a 'patched' copy of the deployed encoder and exit 0; a bad bug a traceback."""
    ws = build_workspace(tmp_path).root
    done = run_stage("patch", ws)
    assert (done.returncode, done.stderr.splitlines()) == (
        1, ["patch: bugs: the bug registry is missing: run intake first"])
    assert not (ws / "models" / "patched").exists()
    save_bug(image_bug(), ws / "bugs")
    replace(R, os.mkfifo)(ws / "bugs" / "bug-a")  # the stage waited on it for ever
    done = run_stage("patch", ws)
    assert (done.returncode, done.stderr.splitlines()) == (
        1, ["patch: bugs/bug-a/record.json: 'record.json' is a FIFO, not a regular file"])
