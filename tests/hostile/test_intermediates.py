"""Damaged files one stage wrote for another: validate's verdicts (read by intake), intake's log
(read by report), a patch checkpoint's state.json, a retrained head (read by export). Each is
one error naming the file, or an ignored checkpoint, never a traceback or a hang."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mudjack.data import LabelledSet, Task
from mudjack.encoders import get_adapter, load_patch_of, save_encoder
from mudjack.heads import Head, save_head
from mudjack.io import ArtifactError
from mudjack.patching.checkpoint import Checkpointer
from mudjack.safeload import WeightsError
from stages.artifacts import INTAKE_LOG
from stages.export import retrained_head
from stages.intake import validation_verdicts
from stages.report import intake_decisions
from tests.hostile.generate import ADAPTER, SHAPE

pytestmark = pytest.mark.timeout(60, method="thread")  # a FIFO waited on would hang the test


def content(body: str) -> Callable[[Path], Any]:
    return lambda path: path.write_text(body)


VALIDATION = {  # name: (how the file is made, fragment of the message)
    "missing": (lambda path: None, "not found"),
    "corrupt": (content("{oops"), "not valid JSON"),
    "a list": (content("[1]"), "not the validate stage's output"),
    "reports a list": (content('{"reports": [1, 2]}'), "not the validate stage's output"),
    "reports null": (content('{"reports": null}'), "not the validate stage's output"),
    "reasons not a list": (content('{"reports": {"rejected": {"a.json": "x"}}}'), "not the validate"),
    "a directory": (Path.mkdir, "a directory, not a regular file"),
    "a FIFO": (os.mkfifo, "a FIFO, not a regular file"),
}


@pytest.mark.parametrize(("make", "fragment"), VALIDATION.values(), ids=list(VALIDATION))
def test_intake_refuses_validation_verdicts_it_cannot_use(tmp_path: Path, make: Callable[[Path], Any],
                                                          fragment: str) -> None:
    path = tmp_path / "validation.json"
    make(path)
    with pytest.raises(ArtifactError) as caught:
        validation_verdicts(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and fragment in message, message
    assert message.endswith("run validate first")


def test_intake_reads_the_verdicts_validate_wrote(tmp_path: Path) -> None:
    verdicts = {"accepted": ["b.json"], "rejected": {"a.json": ["bad"]}, "codes": {"a.json": "bad_field"}}
    (tmp_path / "validation.json").write_text(json.dumps({"passed": True, "reports": verdicts}))
    assert validation_verdicts(tmp_path / "validation.json") == verdicts


def test_report_refuses_a_corrupt_intake_log_with_one_line(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert intake_decisions() == []  # no log: no decisions to show
    INTAKE_LOG.parent.mkdir()
    INTAKE_LOG.write_text('{"report_id": "a", "decision": "accepted"}\n\n')
    assert intake_decisions() == [{"report_id": "a", "decision": "accepted"}]
    for body, fragment in (("{}\n{not json\n", "not valid JSON (line 2: "), ("[1]\n", "not a JSON object")):
        INTAKE_LOG.write_text(body)
        with pytest.raises(ArtifactError, match=r"^bugs/_intake_log\.jsonl: ") as caught:
            intake_decisions()
        assert fragment in str(caught.value)


def test_a_checkpoint_whose_state_is_not_a_mapping_is_ignored_and_removed(tmp_path: Path) -> None:
    folder = tmp_path / "patch"
    folder.mkdir()
    (folder / "state.json").write_text("[1]")
    (folder / "state.safetensors").write_bytes(b"x")
    model = torch.nn.Linear(2, 2)
    assert Checkpointer(folder, 5, "key").load(model, torch.optim.SGD(model.parameters(), lr=0.1)) is None
    assert not folder.exists()


HEADS = {  # name: (in_dim, classes, fragment)
    "5 classes for a 10-class task": (8, 5, "the head gives 5 classes where its task has 10"),
    "features of another encoder": (16, 10, "the head takes 16 features where the encoder gives 8"),
}


@pytest.mark.parametrize(("in_dim", "classes", "fragment"), HEADS.values(), ids=list(HEADS))
def test_export_refuses_a_head_that_does_not_fit_the_encoder_or_task(tmp_path: Path, in_dim: int,
                                                                     classes: int, fragment: str) -> None:
    part = LabelledSet(np.zeros((2, *SHAPE), np.uint8), np.zeros(2, np.int64))
    task, adapter = Task("digits", list(range(10)), part, part), get_adapter("small_cnn", ADAPTER)
    path = tmp_path / "patched.safetensors"
    save_head(Head(in_dim, classes, hidden=[], dropout=0.0), path)
    with pytest.raises(WeightsError) as caught:
        retrained_head(path, adapter, task)
    assert str(caught.value).startswith(f"{path}: {fragment}")
    save_head(Head(ADAPTER["feature_dim"], 10, hidden=[], dropout=0.0), path)
    assert retrained_head(path, adapter, task).spec["classes"] == 10


PATCHED = {  # name: (adapter, config change, fragment)
    "another input shape": ("small_cnn", {"input_shape": [16, 16, 3]}, "its input_shape differ"),
    "another normalisation": ("small_cnn", {"mean": [0.25] * 3}, "its mean differ"),
    "another family": ("resnet_cifar", {"depth": 20, "input_shape": [32, 32, 3]},
                       "a resnet_cifar encoder is not a patch of the small_cnn encoder"),
}


@pytest.mark.parametrize(("name", "change", "fragment"), PATCHED.values(), ids=list(PATCHED))
def test_a_patched_encoder_must_be_the_deployed_one_with_other_weights(tmp_path: Path, name: str,
                                                                      change: dict, fragment: str) -> None:
    deployed, patched = tmp_path / "deployed.safetensors", tmp_path / "patched.safetensors"
    adapter = get_adapter("small_cnn", ADAPTER)
    save_encoder(adapter.build(), adapter, deployed)
    save_encoder(adapter.build(), adapter, patched)
    assert load_patch_of(patched, deployed)[1].config == adapter.config  # other weights, same model
    other = get_adapter(name, {**(ADAPTER if name == "small_cnn" else {}), **change})
    save_encoder(other.build(), other, patched)
    with pytest.raises(WeightsError) as caught:
        load_patch_of(patched, deployed)
    assert str(caught.value).startswith(str(patched)) and fragment in str(caught.value), caught.value
