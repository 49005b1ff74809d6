"""Hostile prepare inputs: a task name that is a path is refused by the parameter check; a data
source that cannot be read ends the stage with one line naming the file, while one unreadable
image among many is skipped and named, and the rest goes on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from mudjack.config import ParamsError
from mudjack.data import load_task
from stages.config import load_params
from tests.hostile.test_params import ROOT, run_stage

BAD_NAMES = {"dotdot": "../../../ESCAPED", "absolute": "/ABSOLUTE", "slash": "a/b",
             "backslash": "a\\b", "dot": ".", "parent": "..", "empty": "", "nul": "x\0y", "long": "x" * 300}


def workspace(folder: Path, prepare: dict[str, Any]) -> Path:
    """`folder` with the project's params.yaml, its `prepare` section updated with `prepare`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"] |= prepare
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_task_name_must_be_a_plain_folder_name(name: str, tmp_path: Path) -> None:
    further = {"more_tasks": [{"name": name, "downstream": {"loader": "digits"}}]}
    for key, prepare in (("prepare.task", {"task": name}), ("prepare.more_tasks.0.name", further)):
        with pytest.raises(ParamsError) as caught:
            load_params(workspace(tmp_path, prepare) / "params.yaml")
        message = str(caught.value)
        assert "\n" not in message and f"{key}: " in message, message


def test_a_plain_task_name_is_kept(tmp_path: Path) -> None:
    params = load_params(workspace(tmp_path, {"task": "my-task_2.v1"}) / "params.yaml")
    assert params.prepare.task == "my-task_2.v1"


def test_an_unreadable_source_ends_prepare_with_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nfine\t0\nbad\tpositive\n")
    source = {"downstream": {"loader": "tsv", "path": "t.tsv"}}
    result = run_stage("prepare", workspace(tmp_path, source), timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["prepare: t.tsv: line 3: label 'positive' is not an integer"]


def test_prepare_skips_a_fifo_and_a_junk_image_and_goes_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        folder = tmp_path / "f" / label
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    os.mkfifo(tmp_path / "f" / "0" / "pipe.png")  # reading it would wait for a writer forever
    (tmp_path / "f" / "1" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    source = {"downstream": {"loader": "image_folders", "path": "f"}}
    result = run_stage("prepare", workspace(tmp_path, source), timeout=120)
    assert result.returncode == 0, result.stderr
    for fragment in ("skipped '0/pipe.png': 'pipe.png' is a FIFO", "skipped '1/junk.jpg'",
                     "2 of 10 images skipped"):
        assert fragment in result.stderr, result.stderr
    task = load_task(tmp_path / "data" / "prepared" / "tasks" / "digits")
    assert len(task.train) + len(task.test) == 8
