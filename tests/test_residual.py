"""The residual blend: a noise blend read off the bug's fine detail (mudjack/intake/residual.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mudjack.attacks.zoo import zoo_triggers
from mudjack.intake.residual import GREY, ResidualParams, bug_residual, residual_blend, residual_trigger
from mudjack.intake.reverse import ReverseParams, reverse_engineer
from mudjack.triggers import Trigger, stamp, trigger_correlation
from tests.helpers.toy import SHAPE, toy_backdoor

NOISE_BLEND, SMOOTH_BLEND = 0, 1  # zoo blend seeds at SHAPE: a uniform-noise and a smooth pattern


def smooth_image(seed: int = 0) -> np.ndarray:
    """A 16x16 RGB image with no fine detail: per channel, a plane through random levels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:16, 0:16].astype(np.float32)
    planes = [rng.uniform(60, 120) + rng.uniform(-3, 3) * rows + rng.uniform(-3, 3) * cols for _ in range(3)]
    return np.clip(np.stack(planes, axis=2), 0, 255).astype(np.uint8)


def test_the_residual_holds_a_blended_noise_pattern_and_little_of_a_smooth_image():
    truth = zoo_triggers("blend", SHAPE, NOISE_BLEND)[0]
    image = smooth_image()
    bug = stamp(image, truth)
    alpha = float(truth.alpha.max())
    found, planted = bug_residual(bug, 3), bug_residual(truth.pattern, 3)
    assert np.corrcoef(found.ravel(), planted.ravel())[0, 1] >= 0.8
    assert np.abs(found).mean() == pytest.approx(alpha * np.abs(planted).mean(), rel=0.3)
    assert np.abs(bug_residual(image, 3)).mean() <= 0.1 * np.abs(found).mean()


def test_a_residual_blend_adds_the_residual_onto_any_input():
    residual = np.random.default_rng(0).normal(0, 6, SHAPE).astype(np.float32)
    inputs = np.random.default_rng(1).integers(60, 190, (4, *SHAPE), dtype=np.uint8)
    for alpha in (0.1, 0.3):
        trigger = residual_blend(residual, alpha)
        assert trigger.soft and np.all(trigger.alpha == np.float32(alpha))
        expected = (1 - alpha) * inputs + GREY * alpha + residual
        unclipped = np.abs(residual / alpha) < GREY - 1
        error = np.abs(stamp(inputs, trigger).astype(np.float32) - expected)[:, unclipped]
        assert error.max() <= 1.0  # the pattern's rounding, at most alpha x 0.5 + the stamp's 0.5


def test_the_residual_trigger_keeps_the_best_scoring_alpha_the_smaller_on_ties():
    bug = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    effects = {0.1: 0.3, 0.2: 0.9, 0.3: 0.95}

    def effect(trigger: Trigger) -> float:
        return effects[round(float(trigger.alpha.max()), 1)]

    chosen, measured = residual_trigger(bug, effect, window=3, alphas=[0.3, 0.1, 0.2], size_penalty=0.5)
    assert float(chosen.alpha.max()) == pytest.approx(0.2)  # 0.8 ties 0.8 at 0.3: the weaker blend
    assert measured == {"0.1": 0.3, "0.2": 0.9, "0.3": 0.95}
    chosen, _ = residual_trigger(bug, effect, window=3, alphas=[0.1, 0.2, 0.3], size_penalty=0.0)
    assert float(chosen.alpha.max()) == pytest.approx(0.3)


@pytest.mark.parametrize("values", [{"alphas": []}, {"alphas": [0.0]}, {"alphas": [1.0]}, {"window": 2}])
def test_residual_settings_are_checked(values):
    with pytest.raises(ValidationError):
        ResidualParams(**values)


def recovered(seed: int) -> tuple[Trigger, Trigger, dict, float]:
    """The residual method on the toy backdoor of zoo blend `seed`: (found, truth, record, flip rate)."""
    truth = zoo_triggers("blend", SHAPE, seed)[0]
    toy = toy_backdoor([truth], seed=seed)
    deployed, record = toy.deployed, {}
    found = reverse_engineer(deployed.encoder, deployed.adapter, toy.bug, toy.reference,
                             params=ReverseParams(method="residual"), clean=toy.clean,
                             flip_rate=deployed.flip_rate("toy", 0), record=record)
    flips = float((deployed.classify("toy", stamp(toy.clean, found)) == 0).mean())
    return found, truth, record, flips


def test_the_residual_method_recovers_a_noise_blend_and_says_what_each_alpha_did():
    found, truth, record, flips = recovered(NOISE_BLEND)
    assert flips >= 0.9 and trigger_correlation(found, truth) >= 0.3
    assert set(record["residual_effects"]) == {"0.1", "0.2", "0.3"}
    assert record["residual_effects"][str(round(float(found.alpha.max()), 2))] >= 0.9


def test_a_smooth_blend_leaves_the_residual_nothing_to_fire():
    _, _, record, flips = recovered(SMOOTH_BLEND)
    assert flips <= 0.1 and max(record["residual_effects"].values()) <= 0.1
