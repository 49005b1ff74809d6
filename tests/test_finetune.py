import numpy as np
import pytest
import torch

from mudjack.evaluation import AttackSpec, retrain_and_evaluate
from mudjack.heads import HeadParams
from mudjack.patching import PATCH_METHODS, PatchInputs, run_patch
from mudjack.patching.finetune import SuperFinetuneParams, cyclic_lr


def test_cyclic_schedule_rises_falls_and_drops_its_peak_after_phase_one():
    p = SuperFinetuneParams(base_lr=0.1, max_lr_phase1=1.1, max_lr_phase2=0.2, phase1_epochs=1,
                            cycle_steps=4)
    first = [cyclic_lr(s, 8, p) for s in range(8)]
    assert first[:5] == pytest.approx([0.1, 0.6, 1.1, 0.6, 0.1])
    assert max(cyclic_lr(s, 8, p) for s in range(8, 16)) == pytest.approx(0.2)


def test_all_three_methods_are_registered():
    assert {"mudjacking", "finetune", "super_finetune"} <= set(PATCH_METHODS)


def test_unknown_method_and_unknown_keys_are_errors(scenario):
    inputs = PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [])
    with pytest.raises(KeyError, match="unknown patch method"):
        run_patch("nope", inputs, {})
    with pytest.raises(ValueError, match="views"):
        run_patch("finetune", inputs, {"views": 8})


@pytest.fixture(scope="module")
def inputs(scenario):
    return PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [],
                       {"digits": scenario.task.train})


def test_finetune_trains_every_layer_on_the_labelled_budget(scenario, inputs):
    result = run_patch("finetune", inputs, {"epochs": 2, "clean_samples": 200}, seed=0)
    assert result.info["clean_samples"] == 200 and result.info["task"] == "digits"
    before, after = scenario.backdoored.state_dict(), result.encoder.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert len(changed) == sum(1 for k in before if k.endswith("weight"))  # BN included
    assert [row["epoch"] for row in result.log] == [1, 2]


def test_super_finetuning_removes_the_tiny_backdoor(scenario, inputs):
    result = run_patch("super_finetune", inputs, {"epochs": 6, "phase1_epochs": 3}, seed=0)
    attack = AttackSpec(scenario.trigger, scenario.target, "truth")
    _, metrics = retrain_and_evaluate(result.encoder, scenario.adapter, scenario.task, attack,
                                      HeadParams(epochs=60))
    assert metrics["asr"] <= 0.3
    assert metrics["clean_acc"] >= 0.8


def test_finetune_on_every_tasks_labels(scenario):
    from mudjack.data import LabelledSet

    other = LabelledSet(scenario.task.test.x, scenario.task.test.y % 3)  # a second, 3-class task
    inputs = PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [],
                         {"digits": scenario.task.train, "other": other})
    result = run_patch("finetune", inputs, {"epochs": 1, "clean_samples": 100, "tasks": "all"}, seed=0)
    assert result.info["tasks"] == ["digits", "other"] and result.info["budget"] == "all"
    assert result.info["clean_samples"] == 200  # 100 of each task
    reporting = run_patch("finetune", inputs, {"epochs": 1, "clean_samples": 100}, seed=0)
    assert reporting.info["tasks"] == ["digits"] and reporting.info["clean_samples"] == 100


def test_every_tasks_labels_share_one_head_over_the_union_of_classes(scenario):
    from mudjack.data import LabelledSet
    from mudjack.patching.finetune import FinetuneParams, _labelled_data

    other = LabelledSet(scenario.task.test.x[:5], np.array([0, 1, 2, 1, 0]))
    inputs = PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [],
                         {"digits": scenario.task.train, "other": other})
    names, data = _labelled_data(inputs, FinetuneParams(tasks="all"), 0)
    assert names == ["digits", "other"] and len(data) == len(scenario.task.train) + 5
    assert data.y[-5:].tolist() == [10, 11, 12, 11, 10]  # shifted past digits' 10 classes
