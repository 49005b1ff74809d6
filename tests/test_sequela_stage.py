"""The sequela stage on the tiny digits scenario, the multi-task prepare stage, and the choice of
the attacked task and of the backdoor to re-inject."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mudjack.bugs import Bug, RegistryError, save_bug
from mudjack.config import ParamsError
from mudjack.data import Task, load_tasks, save_task
from mudjack.device import cuda_devices, select_device
from mudjack.encoders import save_encoder
from mudjack.heads import save_head
from mudjack.io import read_json, write_npz
from mudjack.triggers import patch_trigger
from mudjack.truth import truth_arrays
from stages import prepare, sequela
from stages.artifacts import BUGS, HEADS, PATCHED_ENCODER, SEQUELA
from stages.config import PipelineParams

PATHS = {"shadow": "shadow.npz", "tasks": "tasks", "encoder": "backdoored.safetensors", "heads": "deployed",
         "inbox": "inbox", "truth": "truth.npz"}


def _write_params(folder: Path, **sections) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump({"paths": PATHS, **sections}))


def test_prepare_builds_every_task(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "more.npz", x=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
              y=np.repeat(np.arange(4), 10))
    write_npz(tmp_path / "more_test.npz", x=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
              y=np.repeat(np.arange(3), 4))
    more = [{"name": "split", "downstream": {"loader": "npz", "path": "more.npz"}, "test_fraction": 0.25},
            {"name": "own_test", "downstream": {"loader": "npz", "path": "more.npz"},
             "test": {"loader": "npz", "path": "more_test.npz"}}]
    _write_params(tmp_path, prepare={"task": "digits", "more_tasks": more})
    monkeypatch.chdir(tmp_path)
    prepare.main()
    tasks = load_tasks("data/prepared/tasks")
    assert sorted(tasks) == ["digits", "own_test", "split"]
    assert (len(tasks["split"].train), len(tasks["split"].test)) == (32, 8)  # round(2.5) of each class
    assert (len(tasks["own_test"].train), len(tasks["own_test"].test)) == (40, 12)
    assert tasks["split"].classes == [0, 1, 2, 3] and tasks["digits"].classes == list(range(10))


def test_task_names_must_differ():
    more = [{"name": "digits", "downstream": {"loader": "digits"}}]
    with pytest.raises(ValueError, match="task names must differ"):
        PipelineParams(paths=PATHS, prepare={"more_tasks": more})


def test_the_attacked_task():
    from stages.attack import attacked_task

    tasks = {name: Task(name, [0], None, None) for name in ("a", "b")}
    attack = {"target": 0, "trigger": {"size": 2}}
    params = PipelineParams(paths=PATHS, prepare={"task": "b"}, attack=attack)
    assert attacked_task(params, tasks).name == "b"
    assert attacked_task(PipelineParams(paths=PATHS, attack={**attack, "task": "a"}), tasks).name == "a"
    assert attacked_task(params, {"only": tasks["a"]}).name == "a"
    with pytest.raises(SystemExit, match="no task 'c'"):
        attacked_task(PipelineParams(paths=PATHS, attack={**attack, "task": "c"}), tasks)


def test_without_truth_the_first_bugs_reversed_trigger_is_reinjected(scenario):
    params = PipelineParams(paths={**PATHS, "truth": ""})
    bugs = [Bug(f"b{i}", "digits", 3, predicted, scenario.task.test.x[0], scenario.task.test.x[1],
                scenario.trigger) for i, predicted in enumerate([5, 0, 0])]
    task, trigger, target, source = sequela.reinjected(params, bugs)
    assert (task, trigger, target, source) == ("digits", scenario.trigger, 0, "reversed")
    assert sequela.reinjected(params, []) is None


@pytest.fixture
def workspace(scenario, tmp_path, monkeypatch) -> Path:
    """What the sequela stage reads: the tiny scenario's encoders, retrained heads, task, truth."""
    monkeypatch.chdir(tmp_path)
    save_encoder(scenario.backdoored, scenario.adapter, PATHS["encoder"])
    save_encoder(scenario.backdoored, scenario.adapter, PATCHED_ENCODER)  # an unrepaired "repair"
    save_encoder(scenario.clean, scenario.adapter, "clean.safetensors")
    for variant in ("backdoored", "patched"):
        save_head(scenario.head, HEADS / "digits" / f"{variant}.safetensors")
    save_task(scenario.task, Path(PATHS["tasks"]) / "digits")
    write_npz(PATHS["shadow"], x=scenario.shadow[:128])
    write_npz(PATHS["truth"], **truth_arrays([(scenario.trigger, {"digits": 0})]))
    BUGS.mkdir()  # intake's registry, empty: nothing was accepted
    sections = {"seed": 0, "retrain": {"epochs": 30},
                "sequela": {"mi_samples": 100, "reinject_max_steps": 20, "reinject_check_every": 5,
                            "reinject_asr": 0.5, "reinject_check_samples": 50,
                            "clean_encoder": "clean.safetensors"}}
    _write_params(tmp_path, **sections)
    return tmp_path


def test_sequela_stage_writes_every_measure(workspace):
    sequela.main()
    result = read_json(SEQUELA)
    mi = result["membership"]["digits"]
    assert set(mi) == {"backdoored", "patched"} and mi["patched"]["samples"] == 100
    assert 0.0 <= mi["patched"]["advantage"] <= 1.0 and 0.0 <= mi["patched"]["auc"] <= 1.0
    reinjection = result["reinjection"]
    assert (reinjection["task"], reinjection["target"], reinjection["trigger"]) == ("digits", 0, "truth")
    assert reinjection["repaired"]["steps"] == 0  # the "repaired" encoder still carries the backdoor
    clean = reinjection["clean"]
    assert clean["max_steps"] == 20 and clean["curve"][0][0] == 0
    assert clean["steps"] is None or 0 < clean["steps"] <= 20
    assert reinjection["attack_budget_steps"] == 20 * 2  # default BadEncoder: 20 epochs of 128 / 64
    assert reinjection["device"] == str(select_device("auto"))  # `sequela.device` defaults to auto


@pytest.mark.skipif(cuda_devices() > 0, reason="needs a machine without CUDA")
def test_the_sequela_stage_trains_where_sequela_device_says(workspace):
    """A device this machine lacks is refused by name: the stage reads the setting."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["sequela"]["device"] = "cuda:0"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="device 'cuda:0' requested, but this machine has 0 CUDA"):
        sequela.main()
    assert not SEQUELA.exists()


@pytest.mark.parametrize(("field", "side", "says"), [
    ({"predicted": 999}, 8, "predicted 999 must be classes of task 'digits'"),
    ({"task": "ghost"}, 8, "names task 'ghost', not one of the tasks here"),
    ({}, 16, "its images are (16, 16, 3); task 'digits' takes (8, 8, 3)"),
])
def test_a_bug_that_does_not_fit_the_tasks_or_encoder_is_refused_naming_it(workspace, field, side, says):
    """Each gave a traceback (ValueError, IndexError) or silently no re-injection."""
    image = np.zeros((side, side, 3), np.uint8)
    bug = {"id": "b1", "task": "digits", "label": 3, "predicted": 0, **field}
    save_bug(Bug(**bug, bug=image, reference=image, trigger=patch_trigger((side, side, 3), 2, 1, 1)), BUGS)
    with pytest.raises(RegistryError, match=f"^bugs/b1: .*{re.escape(says)}"):
        sequela.main()
    assert not SEQUELA.exists()
