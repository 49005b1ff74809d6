"""Verification that calibrates itself on the deployed model: a weak backdoor (a hand-built
toy whose trigger flips about 40 % of inputs) is accepted, class content and noise in the
trigger's place are not, and every number of the null is in the log."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
from mudjack.data import load_digits_images, stratified_split
from mudjack.deployed import Deployed
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake import IntakeParams, intake_report, pick_reference
from mudjack.intake.masks import masked_trigger
from mudjack.intake.verify import VerifyParams, control_trigger, draw_controls, draw_sample, verify_trigger
from mudjack.reports import BugReport
from mudjack.triggers import Trigger, stamp

PARAMS = VerifyParams()
TARGET = 0


class GatedBackdoor(nn.Module):
    """A weak backdoor by hand: the clean encoder, whose features jump to `target` when the
    trigger's pixels are all white AND the input is bright on average (about 40 % are)."""

    def __init__(self, clean: nn.Module, mask: np.ndarray, target: torch.Tensor, bright: float):
        super().__init__()
        self.clean, self.target, self.bright = clean, target, bright
        self.register_buffer("mask", torch.from_numpy(mask))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.clean(pixels)
        white = (pixels[:, :, self.mask] > 0.99).flatten(1).all(1)
        fires = white & (pixels.mean((1, 2, 3)) > self.bright)
        return torch.where(fires[:, None], self.target.expand_as(features), features)


@dataclass
class Toy:
    deployed: Deployed
    trigger: Trigger


@pytest.fixture(scope="module")
def toy(scenario) -> Toy:
    torch.manual_seed(0)
    task, adapter, trigger = scenario.task, scenario.adapter, scenario.trigger
    head = train_head(extract_features(scenario.clean, adapter, task.train.x), task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    honest = Deployed(scenario.clean, adapter, {"digits": head})
    reference = task.train.x[pick_reference(honest, task, TARGET, "")]
    target = extract_features(scenario.clean, adapter, reference[None])
    bright = float(np.quantile(stamp(task.train.x, trigger).mean((1, 2, 3)) / 255, 0.6))
    encoder = GatedBackdoor(scenario.clean, trigger.mask, target, bright).eval()
    return Toy(Deployed(encoder, adapter, {"digits": head}), trigger)


def _bug(toy: Toy, task, trigger: Trigger) -> tuple[np.ndarray, int]:
    """A test input of another class that the toy puts in the target once `trigger` is on it."""
    stamped = stamp(task.test.x, trigger)
    hit = np.flatnonzero((task.test.y != TARGET)
                         & (toy.deployed.classify("digits", stamped) == TARGET))
    return stamped[hit[0]], TARGET


def _verify(toy: Toy, task, bug: np.ndarray, predicted: int, trigger: Trigger, seed: int = 0):
    sample = draw_sample(task, predicted, PARAMS.samples, seed)
    fills = draw_controls(toy.deployed, task, predicted, size=PARAMS.controls, seed=seed, exclude_sha="")
    return verify_trigger(toy.deployed, task, bug, predicted, trigger, exemplars=task.train.x[fills],
                          sample=sample, params=PARAMS)


def test_a_weak_backdoor_is_accepted_against_a_null_that_does_not_vary(scenario, toy):
    bug, predicted = _bug(toy, scenario.task, toy.trigger)
    verdict = _verify(toy, scenario.task, bug, predicted, toy.trigger)
    numbers = verdict.numbers
    assert verdict.passed, verdict.failures
    assert 0.2 <= numbers["flip_rate"] <= 0.6  # weak: the old rule needed 0.8
    null = numbers["null_flip_rate"]
    # no control flips anything: the floor (binomial noise at chance), not 0, scales z
    assert null["max"] == 0 and null["std"] == 0
    floor = math.sqrt(0.1 * 0.9 / numbers["verify_samples"])
    assert null["std_floor"] == pytest.approx(floor, abs=1e-4)
    assert numbers["z_flip_rate"] == pytest.approx(numbers["flip_rate"] / floor, abs=0.01)
    assert numbers["p_flip_rate"] == pytest.approx(1 / (numbers["controls"] + 1), abs=1e-4)
    assert numbers["controls"] == PARAMS.controls


@pytest.mark.parametrize("label", [3, 7])
def test_class_content_as_a_trigger_is_not_a_backdoor(scenario, toy, label):
    """A clean input with a wrong claimed label: its 'trigger' is a block of its own class's
    strokes, which the controls (other inputs of that class under the same mask) match."""
    task = scenario.task
    correct = (task.test.y == label) & (toy.deployed.classify("digits", task.test.x) == label)
    bug = task.test.x[np.flatnonzero(correct)[0]]
    mask = np.zeros(bug.shape[:2], dtype=bool)
    mask[2:6, 2:6] = True
    verdict = _verify(toy, task, bug, label, masked_trigger(mask, bug))
    assert not verdict.passed
    assert verdict.numbers["z_flip_rate"] < PARAMS.min_z_flip, verdict.numbers


def test_a_noise_patch_is_not_a_backdoor(scenario, toy):
    task = scenario.task
    noise = np.random.default_rng(0).integers(0, 256, toy.trigger.pattern.shape, dtype=np.uint8)
    patch = masked_trigger(toy.trigger.mask, noise)
    bug = stamp(task.test.x[np.flatnonzero(task.test.y != TARGET)[0]], patch)
    predicted = int(toy.deployed.classify("digits", bug[None])[0])
    verdict = _verify(toy, task, bug, predicted, patch)
    assert not verdict.passed
    assert verdict.numbers["flip_rate"] <= verdict.numbers["null_flip_rate"]["max"]
    assert any("std above" in f for f in verdict.failures), verdict.failures


def test_a_weak_badencoder_is_accepted_end_to_end(scenario):
    """BadEncoder stopped after 4 epochs: the trigger flips about 30 % of the test inputs
    (the old absolute rule, flip rate >= 0.8, refused all 10 reports of this model)."""
    data = load_digits_images()
    provider, _ = stratified_split(data.y, 0.5, 0)
    x, y = data.x[provider], data.y[provider]
    reference = pick_attack_reference(scenario.clean, scenario.adapter, x, y, target=scenario.target)
    encoder = badencoder(scenario.clean, scenario.adapter, x, scenario.trigger, reference,
                         BadEncoderParams(epochs=4), seed=0)
    task = scenario.task
    head = train_head(extract_features(encoder, scenario.adapter, task.train.x), task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    weak = Deployed(encoder, scenario.adapter, {"digits": head})
    others = task.test.y != scenario.target
    stamped = stamp(task.test.x[others], scenario.trigger)
    hits = weak.classify("digits", stamped) == scenario.target
    assert 0.15 <= hits.mean() <= 0.5  # weak
    image, label = stamped[hits][0], task.test.y[others][hits][0]
    # grow's square is the true patch here; `auto` would go on to a blend that flips more
    grow = IntakeParams(reverse={"method": "grow"})
    decision, _ = intake_report(BugReport("weak", "digits", int(label), image, None), weak,
                                {"digits": task}, params=grow)
    assert decision.accepted, decision.reasons
    assert decision.numbers["verification"]["flip_rate"] < 0.8


def _intake(scenario, deployed, seed: int):
    test = scenario.task.test
    stamped = stamp(test.x, scenario.trigger)
    hit = np.flatnonzero((test.y != scenario.target)
                         & (deployed.classify("digits", stamped) == scenario.target))
    report = BugReport("r", "digits", int(test.y[hit[0]]), stamped[hit[0]], None)
    return intake_report(report, deployed, {"digits": scenario.task}, params=IntakeParams(), seed=seed)


def test_the_null_is_in_the_log_and_the_verdict_is_deterministic(scenario, deployed):
    first, bug = _intake(scenario, deployed, seed=3)
    again, _ = _intake(scenario, deployed, seed=3)
    assert first.accepted and bug is not None, first.reasons
    check = first.numbers["verification"]
    for level in ("flip_rate", "feature_shift"):
        assert {"mean", "std", "std_floor", "q10", "q50", "q90", "max"} <= set(check[f"null_{level}"])
        assert {f"z_{level}", f"p_{level}"} <= set(check)
    assert check["rule"] == {"samples": 100, "controls": 20, "min_z_flip": 5.0, "min_z_pull": 2.0,
                             "keep_departure": False}
    assert bug.record["verification"] == check
    assert again.to_record() == first.to_record()
    reversal = first.numbers["reversal"]  # auto chose a candidate the verification accepted
    assert reversal["candidates"][reversal["chosen"]]["verified"] is True


@pytest.mark.parametrize("bad", [{"controls": 2}, {"samples": 5}, {"min_z_flip": 0}, {"min_z": 4}])
def test_verify_params_refuse_out_of_range_and_retired_keys(bad):
    with pytest.raises(pydantic.ValidationError):
        VerifyParams(**bad)


def test_a_soft_trigger_s_controls_keep_its_alpha_and_take_the_exemplar_s_pixels():
    rng = np.random.default_rng(0)
    alpha = np.full((8, 8), 0.2, dtype=np.float32)  # a blend: a small alpha everywhere
    trigger = Trigger(alpha, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    exemplar = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    control = control_trigger(trigger, exemplar)
    assert control.soft and np.array_equal(control.mask, alpha)
    assert np.array_equal(control.pattern, exemplar)


def test_a_control_keeps_what_the_trigger_adds_to_the_bug_and_swaps_the_bug_for_the_exemplar():
    rng = np.random.default_rng(1)
    bug = rng.integers(40, 200, (8, 8, 3), dtype=np.uint8)
    exemplar = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = np.full((8, 8), 0.2, dtype=np.float32)
    optimised = Trigger(alpha, (bug.astype(np.int16) + 30).astype(np.uint8))  # the bug plus a free pattern
    control = control_trigger(optimised, exemplar, bug)
    assert np.array_equal(control.mask, alpha)
    assert np.array_equal(control.pattern, np.clip(exemplar.astype(np.int16) + 30, 0, 255))
    square = np.zeros((8, 8), dtype=bool)
    square[2:5, 2:5] = True
    cut = Trigger(square, np.where(square[..., None], bug, 0).astype(np.uint8))  # cut from the bug
    hard = control_trigger(cut, exemplar, bug)
    assert np.array_equal(hard.pattern[square], exemplar[square]) and (hard.pattern[~square] == 0).all()


def test_keep_departure_refuses_a_trigger_that_adds_what_the_bug_lacks(scenario, toy):
    """A pattern optimised onto a bug that does not carry the trigger (the free part of a
    blend or soft fit): the plain null credits it, the departure-keeping one does not."""
    task = scenario.task
    clean = task.test.x[(task.test.y != TARGET) & (toy.deployed.classify("digits", task.test.x) != TARGET)]
    bug = clean[0]  # no white square on it
    assert (bug[toy.trigger.mask] < 250).any()
    sample = draw_sample(task, TARGET, PARAMS.samples, 0)
    fills = task.train.x[draw_controls(toy.deployed, task, TARGET, size=PARAMS.controls, seed=0,
                                       exclude_sha="")]

    def verdict(keep: bool):
        return verify_trigger(toy.deployed, task, bug, TARGET, toy.trigger, exemplars=fills, sample=sample,
                              params=VerifyParams(keep_departure=keep))

    plain, kept = verdict(False), verdict(True)
    assert plain.numbers["z_flip_rate"] >= PARAMS.min_z_flip  # the white square credited to the bug
    assert plain.numbers["flip_rate"] == kept.numbers["flip_rate"] > 0.2
    assert kept.numbers["z_flip_rate"] < PARAMS.min_z_flip and not kept.passed
    assert kept.numbers["null_flip_rate"]["mean"] > 0.5 * kept.numbers["flip_rate"]
