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

from mudjack.data import Task, load_digits_images, stratified_split
from mudjack.io import read_json
from stages.artifacts import INTAKE_SUMMARY, METRICS
from tests.conftest import Scenario
from tests.helpers.byo import parity, run_repair, write_project
from tests.test_hf_vision import SIDE, tiny_hf_vision
from tests.test_hf_vision_run import TARGET, TINY, upscale, warm_up

pytestmark = pytest.mark.slow


def backdoored_scenario(folder: Path, family: str) -> tuple[Scenario, Task]:
    """The tiny `family` model warmed up and backdoored, its digits head, and the parity task."""
    from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
    from mudjack.features import extract_features
    from mudjack.heads import HeadParams, train_head
    from mudjack.triggers import patch_trigger

    torch.set_num_threads(1)
    adapter = tiny_hf_vision(folder, family)
    data = load_digits_images()
    provider, rest = stratified_split(data.y, 0.5, 0)
    downstream = data.subset(rest)
    test, train = stratified_split(downstream.y, 0.5, 1)
    shadow = upscale(data.subset(provider), SIDE)
    clean = warm_up(adapter.load_pretrained(), adapter, shadow)
    trigger = patch_trigger((SIDE, SIDE, 3), 5, SIDE - 6, SIDE - 6)
    reference = pick_attack_reference(clean, adapter, shadow.x, shadow.y, target=TARGET)
    backdoored = badencoder(clean, adapter, shadow.x, trigger, reference,
                            BadEncoderParams(optimizer="adam", lr=1e-3, epochs=12), seed=0)
    digits = Task("digits", list(range(10)), *(upscale(downstream.subset(i), 24) for i in (train, test)))
    head = train_head(extract_features(backdoored, adapter, digits.train.x), digits.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    at_side = Task("digits", digits.classes, *(upscale(downstream.subset(i), SIDE) for i in (train, test)))
    return Scenario(adapter, clean, backdoored, head, shadow.x, digits, trigger, TARGET), parity(at_side)


@pytest.mark.parametrize("family", ["convnext", "clip", "resnet"])
def test_a_bring_your_own_run_repairs_every_family(family: str, tmp_path: Path) -> None:
    scenario, second = backdoored_scenario(tmp_path / "model", family)
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
