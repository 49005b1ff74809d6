"""The bring-your-own run of tests/test_hf_vision_run.py for the other families' shapes: a
ConvNeXt (LayerNorm CNN), a CLIP folder (its image tower) and a ResNet (BatchNorm), each tiny
and random at 32x32 with the contract tests' configs (tests/test_hf_vision.py), warmed up on the
digits, backdoored with a 5x5 white patch and repaired through validate, intake, patch,
retrain, export and report with two tasks (digits at 24x24, parity at 32x32).

Slow (about 2 CPU-minutes a family): the ViT run stays in the default suite. Printed numbers
are in docs/results.md; asserted is what must hold for any family: the report is accepted,
the repair lowers ASR on both tasks and the ONNX models match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mudjack.io import read_json
from mudjack.triggers import patch_trigger
from stages.artifacts import INTAKE_SUMMARY, METRICS
from tests.helpers.byo import digits_backdoor, run_repair, write_project
from tests.test_hf_vision import SIDE, tiny_hf_vision
from tests.test_hf_vision_run import TINY

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["convnext", "clip", "resnet"])
def test_a_bring_your_own_run_repairs_every_family(family: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trigger = patch_trigger((SIDE, SIDE, 3), 5, SIDE - 6, SIDE - 6)
    scenario, second = digits_backdoor(tiny_hf_vision(tmp_path / "model", family), trigger=trigger,
                                       digits_side=24)
    root = tmp_path / "byo"
    root.mkdir()
    write_project(root, scenario, tasks=[scenario.task, second], overrides=TINY)
    run_repair(root, validate=True)
    assert read_json(root / INTAKE_SUMMARY)["accepted"] == 1
    metrics = read_json(root / METRICS)
    for name, result in metrics["tasks"].items():
        before, after = result["backdoored"], result["patched"]
        print(f"{family} {name}: clean {before['clean_acc']:.3f} -> {after['clean_acc']:.3f}, "
              f"asr {before['asr']:.3f} -> {after['asr']:.3f}")
        assert before["asr"] > 0.9 and after["asr"] < 0.6 * before["asr"], (family, name)
    assert metrics["export"]["max_abs_diff"] <= 1e-4
