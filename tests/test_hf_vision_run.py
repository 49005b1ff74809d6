"""A bring-your-own run on an `hf_vision` encoder: a tiny random ViT (64x64 inputs, patch 16)
saved with `save_pretrained`, given a short supervised warm-up and a BadEncoder backdoor (an
8x8 white patch), repaired through every repair stage with two tasks of other sizes than each
other: digits at 48x48 (resized to 64 by the adapter; its deployed head takes the one report)
and the digits' parity at 64x64.

The stages run in-process as in tests/test_exposure_run.py, validate (Great Expectations)
included, with no truth file: ASR is measured with the accepted bug's reversed trigger.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mudjack.data import Task
from mudjack.io import read_json
from stages.artifacts import (
    EXPORT_SUMMARY,
    INTAKE_SUMMARY,
    METRICS,
    ONNX_DIR,
    ONNX_MANIFEST,
    PATCHED_ENCODER,
    RETRAIN_SUMMARY,
    RUN_HTML,
    VALIDATION,
)
from tests.conftest import Scenario
from tests.helpers.byo import PATHS, digits_backdoor, run_repair, write_project

SIDE = 64
VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
       "image_size": SIDE, "patch_size": 16}
TINY = {"patch": {"epochs": 10, "shadow_fraction": 0.5}, "retrain": {"epochs": 40}}
TARGET = 0


def write_tiny_vit(folder: Path) -> Path:
    """A random 2-layer ViT and its image processor (64x64, mean/std 0.5), saved with save_pretrained."""
    import transformers as hf

    torch.manual_seed(0)
    hf.ViTModel(hf.ViTConfig(**VIT)).save_pretrained(folder)
    hf.ViTImageProcessor(size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Task]:
    """The backdoored ViT with its digits (48x48) deployed head, and the parity task at 64x64."""
    from mudjack.encoders import get_adapter
    from mudjack.triggers import patch_trigger

    torch.set_num_threads(1)
    adapter = get_adapter("hf_vision", {"folder": str(write_tiny_vit(tmp_path_factory.mktemp("vit")))})
    return digits_backdoor(adapter, trigger=patch_trigger((SIDE, SIDE, 3), 8, 52, 52), digits_side=48)


@pytest.fixture(scope="module")
def vit_run(vit_scenario: tuple[Scenario, Task], tmp_path_factory: pytest.TempPathFactory) -> Path:
    scenario, second = vit_scenario
    root = tmp_path_factory.mktemp("byo_vit")
    write_project(root, scenario, tasks=[scenario.task, second], overrides=TINY)
    run_repair(root, validate=True)
    return root


def test_every_stage_ran_on_both_tasks_at_their_own_sizes(vit_run: Path) -> None:
    sizes = {name: read_json(vit_run / PATHS["tasks"] / name / "task.json")["input_shape"]
             for name in ("digits", "parity")}
    assert sizes == {"digits": [48, 48, 3], "parity": [SIDE, SIDE, 3]}
    validation = read_json(vit_run / VALIDATION)
    assert validation["passed"] is True and len(validation["tables"]) == 5
    assert validation["reports"]["accepted"] == ["r-000.json"]
    intake = read_json(vit_run / INTAKE_SUMMARY)
    assert (intake["accepted"], intake["rejected"]) == (1, 0)
    assert (vit_run / PATCHED_ENCODER).is_file() and (vit_run / RUN_HTML).is_file()
    assert set(read_json(vit_run / RETRAIN_SUMMARY)["tasks"]) == {"digits", "parity"}
    assert read_json(vit_run / EXPORT_SUMMARY)["tasks"] == ["digits", "parity"]


def test_metrics_cover_both_tasks_and_the_repair_lowers_asr(vit_run: Path) -> None:
    tasks = read_json(vit_run / METRICS)["tasks"]
    assert set(tasks) == {"digits", "parity"}
    for name, result in tasks.items():
        exposure = result["exposure"]
        assert exposure["exposed"] is True and exposure["not_measured"] == {}, name
        assert (exposure["trigger"], exposure["target"], exposure["target_from"]) == (
            "bug:r-000", TARGET, "inferred")  # parity: digit 0 is even, class 0
        before, after = result["backdoored"], result["patched"]
        assert all(isinstance(m[k], float) for m in (before, after) for k in ("clean_acc", "asr", "tba"))
        assert before["asr"] > 0.9 and after["asr"] < before["asr"], name
        assert after["clean_acc"] >= before["clean_acc"] - 0.15, name
    assert tasks["digits"]["patched"]["asr"] <= 0.3  # the reporting task


def test_both_tasks_export_to_onnx_within_tolerance(vit_run: Path) -> None:
    manifest = read_json(vit_run / ONNX_MANIFEST)
    assert set(manifest["tasks"]) == {"digits", "parity"}
    for name, check in manifest["tasks"].items():
        assert (vit_run / ONNX_DIR / f"{name}.onnx").is_file()
        assert check["passed"] and check["max_abs_diff"] <= 1e-4, name
    assert read_json(vit_run / METRICS)["export"]["max_abs_diff"] <= 1e-4
