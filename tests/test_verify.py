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
from mudjack.intake.trial import clears_at_ceiling, control_trigger, departs, z_failures
from mudjack.intake.verify import (
    VerifyParams,
    draw_controls,
    draw_sample,
    draw_strangers,
    verify_trigger,
)
from mudjack.reports import BugReport
from mudjack.triggers import Trigger, stamp, unstamp

PARAMS = VerifyParams()
TARGET = 0


class HandBackdoor(nn.Module):
    """A backdoor by hand: the clean encoder, whose features jump to `target` where `fires`
    says so for an input (pixels in [0, 1]), given the trigger's mask and a brightness level."""

    def __init__(self, clean: nn.Module, mask: np.ndarray, target: torch.Tensor, level: float):
        super().__init__()
        self.clean, self.target, self.level = clean, target, level
        self.register_buffer("mask", torch.from_numpy(mask))

    def fires(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.clean(pixels)
        return torch.where(self.fires(pixels)[:, None], self.target.expand_as(features), features)


class GatedBackdoor(HandBackdoor):
    """A weak backdoor: it fires when the trigger's pixels are all white AND the input is
    bright on average (`level`; about 40 % are)."""

    def fires(self, pixels: torch.Tensor) -> torch.Tensor:
        white = (pixels[:, :, self.mask] > 0.99).flatten(1).all(1)
        return white & (pixels.mean((1, 2, 3)) > self.level)


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


def _bug(toy: Toy, task, trigger: Trigger) -> tuple[np.ndarray, int, int]:
    """A test input of another class that the toy puts in the target once `trigger` is on it:
    (the stamped input, the target, its true label)."""
    stamped = stamp(task.test.x, trigger)
    hit = np.flatnonzero((task.test.y != TARGET)
                         & (toy.deployed.classify("digits", stamped) == TARGET))
    return stamped[hit[0]], TARGET, int(task.test.y[hit[0]])


def _verify(deployed: Deployed, task, bug: np.ndarray, predicted: int, trigger: Trigger, *, label: int,
            params: VerifyParams = PARAMS):
    """The verification as intake runs it, the client having reported `label`."""
    sample = draw_sample(task, predicted, params.samples, 0)
    fills = draw_controls(deployed, task, predicted, size=params.controls, seed=0, exclude_sha="")
    reference = task.train.x[pick_reference(deployed, task, label, "")]
    strangers = draw_strangers(task, predicted, size=params.controls, seed=0, exclude=sample)
    return verify_trigger(deployed, task, bug, predicted, trigger, label=label, reference=reference,
                          exemplars=task.train.x[fills], sample=sample, params=params, strangers=strangers)


def test_a_weak_backdoor_is_accepted_against_a_null_that_does_not_vary(scenario, toy):
    bug, predicted, label = _bug(toy, scenario.task, toy.trigger)
    verdict = _verify(toy.deployed, scenario.task, bug, predicted, toy.trigger, label=label)
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
    verdict = _verify(toy.deployed, task, bug, label, masked_trigger(mask, bug), label=(label + 1) % 10)
    assert not verdict.passed
    assert verdict.numbers["z_flip_rate"] < PARAMS.min_z_flip, verdict.numbers


def test_a_noise_patch_is_not_a_backdoor(scenario, toy):
    task = scenario.task
    noise = np.random.default_rng(0).integers(0, 256, toy.trigger.pattern.shape, dtype=np.uint8)
    patch = masked_trigger(toy.trigger.mask, noise)
    index = np.flatnonzero(task.test.y != TARGET)[0]
    bug = stamp(task.test.x[index], patch)
    predicted = int(toy.deployed.classify("digits", bug[None])[0])
    verdict = _verify(toy.deployed, task, bug, predicted, patch, label=int(task.test.y[index]))
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
                             "departure": "restore", "key": True, "source": True, "warp": True,
                             "warp_controls": 5}
    assert bug.record["verification"] == check
    untimed = [{k: v for k, v in d.to_record().items() if k != "phase_seconds"} for d in (first, again)]
    assert untimed[0] == untimed[1]  # the same verdict and numbers; only the timings differ
    reversal = first.numbers["reversal"]  # auto chose a candidate the verification accepted
    assert reversal["candidates"][reversal["chosen"]]["verified"] is True


def _flip_numbers(rate: float, z_log_odds: float) -> dict:
    """Verification numbers of a two-class task (n = 100): a wide flip null (max 0.83), a strong pull."""
    flip_null = {"mean": 0.35, "std": 0.26, "std_floor": 0.05, "max": 0.83}
    return {"verify_samples": 100, "controls": 20, "feature_shift": 0.7, "flip_rate": rate,
            "z_flip_rate": round((rate - 0.35) / 0.26, 2), "null_flip_rate": flip_null,
            "z_feature_shift": 11.0, "null_feature_shift": {"mean": 0.1, "max": 0.3},
            "log_odds": 20.0, "null_log_odds": {"mean": 9.0, "max": 14.0}, "z_log_odds": z_log_odds}


def test_a_trigger_that_flips_every_input_clears_the_margin_on_its_log_odds() -> None:
    """"I watched this" flipped 1.000 of the inputs and was refused: z 2.5 < 5 because three
    content words of the target class flip 0.35 +- 0.26, and a rate of 1 has no room above
    that. The log-odds of the predicted class still tell the trigger from content words."""
    margins = VerifyParams()
    assert z_failures(_flip_numbers(1.0, 9.0), 1, margins, ceiling=True) == []
    assert clears_at_ceiling(_flip_numbers(1.0, 9.0), 5.0)
    [failure] = z_failures(_flip_numbers(1.0, 3.0), 1, margins, ceiling=True)  # pushes like content
    assert "flips 1.000" in failure and "need z >= 5.0" in failure
    assert "at its ceiling" in failure and "by 20.00: 3.0 std above" in failure  # the level that decided
    [short] = z_failures(_flip_numbers(0.9, 9.0), 1, margins, ceiling=True)  # not at the ceiling
    assert "ceiling" not in short
    [image] = z_failures(_flip_numbers(1.0, 9.0), 1, margins)  # images: the flip margin only
    assert "ceiling" not in image


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


def test_a_pattern_the_bug_lacks_is_refused_unless_departure_is_free(scenario, toy):
    """A forged report (a clean target-class input claimed to be a 3) whose reversed pattern
    is a white square it lacks: the plain null credits the square to the bug; taken off the
    bug it leaves the target, and controls that keep it flip as much."""
    task = scenario.task
    plain = (task.test.y == TARGET) & (toy.deployed.classify("digits", task.test.x) == TARGET)
    bug = task.test.x[np.flatnonzero(plain)[0]]
    assert (bug[toy.trigger.mask] < 250).any()  # no white square on it

    def verdict(departure: str):
        return _verify(toy.deployed, task, bug, TARGET, toy.trigger, label=3,
                       params=VerifyParams(departure=departure))

    free, null, restore = verdict("free"), verdict("null"), verdict("restore")
    assert free.passed and free.numbers["z_flip_rate"] >= PARAMS.min_z_flip
    assert "departure" not in free.numbers
    assert not null.passed and null.numbers["null_flip_rate"]["mean"] > 0.5 * null.numbers["flip_rate"]
    assert not restore.passed
    check = restore.numbers["departure"]
    assert check["restores"] is False and check["restored_class"] == TARGET
    assert check["kept_null"]["z_flip_rate"] < PARAMS.min_z_flip
    assert "departs from the bug's pixels" in restore.failures[0]


class BlendBackdoor(nn.Module):
    """A blended backdoor by hand: the clean encoder, whose features jump to `target` when the
    input correlates with the noise `pattern` (a 0.3 blend of it does; clean inputs do not)."""

    def __init__(self, clean: nn.Module, pattern: torch.Tensor, target: torch.Tensor):
        super().__init__()
        self.clean, self.target = clean, target
        self.register_buffer("pattern", pattern - pattern.mean())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        centred = pixels - pixels.mean((1, 2, 3), keepdim=True)
        fires = (centred * self.pattern).mean((1, 2, 3)) > 0.04
        features = self.clean(pixels)
        return torch.where(fires[:, None], self.target.expand_as(features), features)


def _blend_bug(scenario, toy) -> tuple[Deployed, Trigger, np.ndarray, int, int]:
    """A hand-made blended backdoor (0.3 of binary noise) and a bug of it: (deployed model,
    trigger, bug, predicted, true label)."""
    task, adapter = scenario.task, scenario.adapter
    binary = np.random.default_rng(2).integers(0, 2, (8, 8, 3)).astype(np.uint8) * 255
    trigger = Trigger(np.full((8, 8), 0.3, dtype=np.float32), binary)
    pattern = adapter.preprocess(binary[None])[0]
    honest = toy.deployed.heads["digits"]
    reference = task.train.x[pick_reference(Deployed(scenario.clean, adapter, {"digits": honest}),
                                            task, TARGET, "")]
    target = extract_features(scenario.clean, adapter, reference[None])
    deployed = Deployed(BlendBackdoor(scenario.clean, pattern, target).eval(), adapter, {"digits": honest})
    bug, predicted, label = _bug(Toy(deployed, trigger), task, trigger)
    return deployed, trigger, bug, predicted, label


def test_a_genuine_blend_departs_from_the_bug_and_is_accepted_because_taking_it_off_restores(scenario, toy):
    """A blend's fitted pattern is the trigger, not the bug's pixels (which carry it at alpha
    0.3): its departure is what flips, and taking it off the bug gives back the true label."""
    deployed, trigger, bug, predicted, label = _blend_bug(scenario, toy)
    assert departs(trigger, bug) and predicted == TARGET
    verdict = _verify(deployed, scenario.task, bug, predicted, trigger, label=label)
    assert verdict.passed, verdict.failures
    assert verdict.numbers["flip_rate"] > 0.9
    departure = verdict.numbers["departure"]
    assert departure["restored_class"] == label and departure["restores"]
    assert departure["controls_restoring"] < 0.5  # only the trigger taken off gives the label back


def test_an_ordinary_error_is_refused_when_taking_any_control_off_restores_it_too(scenario, toy):
    """An ambiguous input (a digit mixed half-and-half with a target digit) that the blend
    backdoored model calls the target is an ordinary error, not a bug under the trigger. The
    genuine trigger still flips other inputs, and taken off the input it may give back the
    reported digit, but then so do most of its controls (the same alpha filled from target
    inputs): whatever leans it away from the target does. Such a report is refused; one where
    few controls restore is not."""
    deployed, trigger, _, predicted, _ = _blend_bug(scenario, toy)
    task = scenario.task
    targets = task.test.x[task.test.y == TARGET]
    verdicts = []
    for i in np.flatnonzero(task.test.y != TARGET)[:30]:
        mixed = np.rint(0.5 * task.test.x[i] + 0.5 * targets[i % len(targets)]).astype(np.uint8)
        if deployed.classify("digits", mixed[None])[0] == predicted:
            verdicts.append(_verify(deployed, task, mixed, predicted, trigger, label=int(task.test.y[i])))
    restoring = [v for v in verdicts if v.numbers.get("departure", {}).get("restores")]
    refused = [v for v in restoring if v.numbers["departure"]["controls_restoring"] >= 0.5]
    assert refused and all(v.numbers["flip_rate"] > 0.9 for v in refused)
    for verdict in refused:
        assert not verdict.passed and "so do" in verdict.failures[0], verdict.failures
    kept = [v for v in restoring if v.numbers["departure"]["controls_restoring"] < 0.5]
    assert kept and all(v.passed for v in kept)


def test_a_whole_image_pattern_must_give_back_the_reported_label(scenario, toy):
    """Over more than half of the image, a departing pattern that does not give back the
    reported label is refused without the controls that keep its departure: the same blend,
    reported with a label it does not restore, is refused though its flips are the backdoor's."""
    deployed, trigger, bug, predicted, label = _blend_bug(scenario, toy)
    claimed = next(c for c in scenario.task.classes if c not in (label, predicted))
    verdict = _verify(deployed, scenario.task, bug, predicted, trigger, label=claimed)
    assert not verdict.passed and verdict.numbers["flip_rate"] > 0.9
    assert verdict.numbers["departure"] == {"restored_class": label, "restores": False}
    assert "over 100% of the image" in verdict.failures[0], verdict.failures


def test_unstamp_undoes_a_blend_and_fills_a_patch():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    fill = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    alpha = np.full((6, 6), 0.2, dtype=np.float32)
    alpha[:2, :2] = 1.0  # a patch in the corner of a blend
    trigger = Trigger(alpha, rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    back = unstamp(stamp(image, trigger), trigger, fill)
    assert np.array_equal(back[:2, :2], fill[:2, :2])
    thin = alpha < 0.5
    assert np.abs(back[thin].astype(int) - image[thin]).max() <= 1  # stamp rounds to whole levels


class KeyedBackdoor(HandBackdoor):
    """A backdoor keyed to a place: it fires when the mask's pixels are brighter on average
    than `level` plus `slack` x the input's mean brightness, whatever put them there (the
    trigger's white, or the strokes of a digit pasted from another input). White fires it on
    every input, strokes (never all white in this place) on the darker ones only, so the
    trigger flips more than any of its controls, as a planted trigger does (resnet20 -> GTSRB
    scatter: 0.92 against at most 0.79)."""

    slack, centre = 0.0, 0.0

    def fires(self, pixels: torch.Tensor) -> torch.Tensor:
        threshold = self.level + self.slack * (pixels.mean((1, 2, 3)) - self.centre)
        return pixels[:, :, self.mask].mean((1, 2)) > threshold


@pytest.fixture(scope="module")
def keyed(scenario, toy) -> tuple[Deployed, Trigger, int]:
    """The keyed toy, aimed at a class whose own strokes fill the key most often (so its
    content fires the backdoor: the controls flip as the trigger does, on fewer inputs), its
    white trigger and that class."""
    task, adapter = scenario.task, scenario.adapter
    mask = np.zeros(task.train.x.shape[1:3], dtype=bool)
    mask[3:5, 4:6] = True
    brightness = task.train.x[:, mask].mean((1, 2)) / 255
    level = float(np.quantile(brightness, 0.4))
    # of the classes none of whose inputs is all white there (no fill is the trigger itself)
    fired = [(brightness[task.train.y == k] > level).mean() if brightness[task.train.y == k].max() < 1 else 0
             for k in range(10)]
    target_class = int(np.argmax(fired))
    reference = task.train.x[pick_reference(toy.deployed, task, target_class, "")]
    target = extract_features(scenario.clean, adapter, reference[None])
    encoder = KeyedBackdoor(scenario.clean, mask, target, level).eval()
    white = np.full(task.train.x.shape[1:], 255, dtype=np.uint8)
    lit = stamp(task.train.x, masked_trigger(mask, white)).mean((1, 2, 3)) / 255
    encoder.centre = float(np.median(task.train.x.mean((1, 2, 3)) / 255))
    encoder.slack = 0.95 * (1 - level) / (float(lit.max()) - encoder.centre)  # white fires on every input
    deployed = Deployed(encoder, adapter, {"digits": toy.deployed.heads["digits"]})
    return deployed, masked_trigger(mask, white), target_class


def test_a_backdoor_keyed_to_its_place_is_accepted_though_its_controls_fire_it(scenario, keyed):
    deployed, trigger, target = keyed
    task = scenario.task
    stamped = stamp(task.test.x, trigger)
    hit = np.flatnonzero((task.test.y != target) & (deployed.classify("digits", stamped) == target))
    bug, label = stamped[hit[0]], int(task.test.y[hit[0]])
    plain = _verify(deployed, task, bug, target, trigger, label=label, params=VerifyParams(key=False))
    assert not plain.passed  # the controls (the target's own strokes) fire it too
    assert plain.numbers["null_flip_rate"]["mean"] > 0.3 and "key" not in plain.numbers
    verdict = _verify(deployed, task, bug, target, trigger, label=label)
    assert verdict.passed, verdict.failures
    key = verdict.numbers["key"]  # other classes' strokes in its place go to the target, not elsewhere
    assert key["z"] >= PARAMS.min_z_flip and key["rate"] > 3 * key["others_max"], key


def test_class_content_in_the_keys_place_is_refused_for_not_topping_its_controls(scenario, keyed):
    """A forged report on the keyed model: a clean input of the target with a wrong label, its
    'trigger' the key's place filled with its own strokes. The place is a real key, and the
    strokes fire it on more inputs than the controls' average, but they are class content like
    the controls' fills, and some of those fire it on more: not the planted trigger."""
    deployed, trigger, target = keyed
    task = scenario.task
    correct = np.flatnonzero((task.test.y == target) & (deployed.classify("digits", task.test.x) == target))
    brightness = task.test.x[correct][:, trigger.mask].mean((1, 2))
    bug = task.test.x[correct[np.argsort(brightness)[int(0.75 * len(correct))]]]  # bright, not the brightest
    verdict = _verify(deployed, task, bug, target, masked_trigger(trigger.mask, bug), label=(target + 1) % 10)
    numbers, key = verdict.numbers, verdict.numbers["key"]
    assert key["z"] >= PARAMS.min_z_flip, key  # the place is a key
    assert numbers["flip_rate"] >= max(key["rate"], numbers["null_flip_rate"]["mean"])  # the old bar
    assert numbers["flip_rate"] <= numbers["null_flip_rate"]["max"]
    assert not verdict.passed
    assert any("does not flip more than every control" in f for f in verdict.failures), verdict.failures


def test_class_content_elsewhere_on_a_keyed_model_is_not_a_key(scenario, keyed):
    """A forged report on the keyed model: a clean input of the target with a wrong label; its
    'trigger' is a block of its strokes away from the key, which other classes' strokes
    replace, so they send inputs nowhere in particular."""
    deployed, _, target = keyed
    task = scenario.task
    correct = (task.test.y == target) & (deployed.classify("digits", task.test.x) == target)
    bug = task.test.x[np.flatnonzero(correct)[0]]
    mask = np.zeros(bug.shape[:2], dtype=bool)
    mask[:3, :3] = True
    verdict = _verify(deployed, task, bug, target, masked_trigger(mask, bug), label=(target + 1) % 10)
    assert not verdict.passed
    assert verdict.numbers["key"]["z"] < PARAMS.min_z_flip, verdict.numbers["key"]
    assert any("not a key" in f for f in verdict.failures)


def test_a_mask_that_carries_its_fills_class_is_a_window_not_a_key(scenario, keyed):
    """The keyed toy's key inside a block of half the image: other classes' inputs pasted
    there reach the target (their strokes fill the key) but are mostly classified as what they
    show, so the block is a window onto content, not a key; over more than half the image the
    key check does not run at all (the fills replace the input)."""
    deployed, trigger, target = keyed
    task = scenario.task
    stamped = stamp(task.test.x, trigger)
    hit = np.flatnonzero((task.test.y != target) & (deployed.classify("digits", stamped) == target))
    bug, label = stamped[hit[0]], int(task.test.y[hit[0]])
    block = np.zeros(trigger.mask.shape, dtype=bool)
    block[:, 2:6] = True  # 32 of 64 pixels
    verdict = _verify(deployed, task, bug, target, masked_trigger(block, bug), label=label)
    key = verdict.numbers["key"]
    assert not verdict.passed and key["z"] < PARAMS.min_z_flip, key
    spread = max(key["others_std"], key["std_floor"])  # the other classes alone would pass it:
    assert (key["rate"] - key["others_max"]) / spread >= PARAMS.min_z_flip, key  # carried decides
    block[:, 1] = True  # 40 of 64
    verdict = _verify(deployed, task, bug, target, masked_trigger(block, bug), label=label)
    assert not verdict.passed and "key" not in verdict.numbers
