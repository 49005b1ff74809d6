"""Mudjacking's `task_images`: the downstream tasks' unlabelled train images added to the
shadow set (mudjack/patching/pool.py), read lazily through `StackedView`."""

from __future__ import annotations

import numpy as np
import pytest

from mudjack.bugs import Bug
from mudjack.data import LabelledSet, StackedView, iter_batches
from mudjack.encoders import get_adapter
from mudjack.patching import PatchInputs, run_patch, training_pool
from mudjack.patching.pool import task_pool
from mudjack.triggers import patch_trigger
from tests.helpers.tiny import HF_VISION, SMALL_CNN, TINY_PATCH_PARAMS


def tagged(count: int, tag: int, side: int = 8) -> np.ndarray:
    """Images whose first pixel says which set (tag) and which row they are."""
    x = np.zeros((count, side, side, 3), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = tag, np.arange(count)
    return x


def test_a_stacked_view_indexes_as_the_concatenated_sets():
    parts = [tagged(5, 1), tagged(3, 2), tagged(4, 3)]
    whole, view = np.concatenate(parts), StackedView(parts)
    assert len(view) == 12 and view.shape == whole.shape and view.dtype == np.uint8
    index = np.array([11, 0, 6, 5, 4, 7, 2])  # any order, crossing every boundary
    assert np.array_equal(view[index], whole[index])
    assert np.array_equal(view[3:9], whole[3:9]) and np.array_equal(view[8], whole[8])
    assert np.array_equal(np.concatenate(list(iter_batches(view, 5))), whole)
    assert np.array_equal(np.asarray(view), whole)
    with pytest.raises(ValueError, match="different item shapes"):
        StackedView([tagged(2, 1), tagged(2, 2, side=4)])


def inputs_with_tasks(adapter, shadow: np.ndarray, **tasks: np.ndarray) -> PatchInputs:
    labelled = {name: LabelledSet(x, np.zeros(len(x), dtype=np.int64)) for name, x in tasks.items()}
    return PatchInputs(adapter.build(), adapter, shadow, [], labelled)


def test_the_pool_adds_task_images_split_evenly_and_leaves_text_tasks_out():
    adapter = get_adapter("small_cnn", SMALL_CNN)
    shadow = tagged(6, 1)
    inputs = inputs_with_tasks(adapter, shadow, a=tagged(10, 2), b=tagged(10, 3),
                               text=np.array(["a sentence"] * 4))
    assert task_pool(inputs, 0) is shadow
    pool = np.asarray(task_pool(inputs, 5, seed=0))
    assert len(pool) == 11 and np.array_equal(pool[:6], shadow)
    tags = pool[6:, 0, 0, 0].tolist()
    assert tags == [2, 2, 2, 3, 3]  # 3 of task a, 2 of b, no sentence
    rows = pool[6:9, 0, 0, 1]
    assert len(set(rows.tolist())) == 3 and (np.diff(rows) > 0).all()  # distinct, drawn in file order
    assert np.array_equal(np.asarray(task_pool(inputs, 5, seed=0)), pool)  # the seed decides the draw
    assert len(task_pool(inputs, 100)) == 26  # asking for more takes every task image


def test_the_pool_resizes_task_images_for_an_encoder_that_resizes_and_names_a_misfit_otherwise():
    vision = get_adapter("hf_vision", HF_VISION)  # 32x32, resizes raw inputs of other sizes
    inputs = inputs_with_tasks(vision, tagged(4, 1, side=32), big=tagged(6, 2, side=48))
    pool = task_pool(inputs, 3)
    assert pool.shape == (7, 32, 32, 3) and pool[4:].shape == (3, 32, 32, 3)
    cnn = get_adapter("small_cnn", SMALL_CNN)  # fixed 8x8: a 16x16 task cannot join its shadow set
    with pytest.raises(ValueError, match="task big: images of shape"):
        task_pool(inputs_with_tasks(cnn, tagged(4, 1), big=tagged(6, 2, side=16)), 3)


def test_mudjacking_trains_on_the_shadow_set_and_the_task_images():
    adapter = get_adapter("small_cnn", SMALL_CNN)
    rng = np.random.default_rng(0)
    shadow, task = (rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in (6, 9))
    trigger = patch_trigger(adapter.input_shape, 2, 1, 1)
    bug = Bug("b", "t", 1, 0, adapter.stamp(shadow[:1], trigger)[0], shadow[1], trigger)
    inputs = PatchInputs(adapter.build().eval(), adapter, shadow, [bug],
                         {"t": LabelledSet(task, np.zeros(9, dtype=np.int64))})
    params = TINY_PATCH_PARAMS["mudjacking"]
    assert run_patch("mudjacking", inputs, params).info["clean_samples"] == 6
    result = run_patch("mudjacking", inputs, {**params, "task_images": 4})
    assert result.info["clean_samples"] == 10 and result.steps == 2  # 10 images at batch 6


def test_the_checkpointed_pool_is_the_one_each_method_trains_on():
    adapter = get_adapter("small_cnn", SMALL_CNN)
    inputs = inputs_with_tasks(adapter, tagged(6, 1), a=tagged(10, 2))
    assert len(training_pool("mudjacking", inputs, {"task_images": 4})) == 10
    assert training_pool("mudjacking", inputs, {}) is inputs.shadow  # the default adds none
    assert training_pool("finetune", inputs, {}) is inputs.shadow  # no task_images setting
