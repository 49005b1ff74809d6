"""Warping triggers (WaNet): a fixed smooth displacement field that paints no pixel. Recovery
fits one (mudjack/intake/warp.py) and `auto` keeps it as an alternate when it reproduces the
bug as well as the chosen trigger does, so the patch also trains against it; when the chosen
trigger is refused, the warp is verified against warps fitted to other classes
(mudjack/intake/warp_check.py) and becomes the trigger when it passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mudjack.attacks.zoo import zoo_triggers
from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.encoders import ImageEncoder
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake import IntakeParams, intake_report, pick_reference
from mudjack.intake.reverse import Recovery, ReverseParams, recover
from mudjack.intake.verify import Verification, VerifyParams, draw_sample
from mudjack.intake.warp import WarpParams, largest_offset, warp_fit
from mudjack.intake.warp_check import verify_warp, warp_fallback
from mudjack.reports import BugReport
from mudjack.triggers import Trigger, flow_cosine, stamp

TARGET = 0


class WarpBackbone(nn.Module):
    """The clean backbone, whose features move to `target` as far as an input is nearer to a
    warped known input than to any known input as it is (differentiable, so a fitted warp is
    drawn toward the planted one); with `mask`, also wherever those pixels are all white."""

    def __init__(self, clean: ImageEncoder, known: np.ndarray, moved: Trigger, target: torch.Tensor,
                 mask: np.ndarray | None = None) -> None:
        super().__init__()
        self.clean, self.target = clean, target
        self.register_buffer("known", torch.from_numpy(known).flatten(1).float() / 255)
        self.register_buffer("warped", torch.from_numpy(stamp(known, moved)).flatten(1).float() / 255)
        self.mask = None if mask is None else torch.from_numpy(mask)

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        features = self.clean.backbone(normalised)
        pixels = normalised * self.clean.std + self.clean.mean
        flat = pixels.permute(0, 2, 3, 1).flatten(1)
        nearer = torch.cdist(flat, self.known).min(1).values - torch.cdist(flat, self.warped).min(1).values
        gate = torch.sigmoid(20 * nearer)
        if self.mask is not None:
            white = (pixels[:, :, self.mask] > 0.99).flatten(1).all(1)
            gate = torch.where(white, torch.ones_like(gate), gate)
        return features + gate[:, None] * (self.target - features)


def warped_model(scenario, moved: Trigger, mask: np.ndarray | None = None) -> Deployed:
    torch.manual_seed(0)
    task, adapter, clean = scenario.task, scenario.adapter, scenario.clean
    head = train_head(extract_features(clean, adapter, task.train.x), task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    reference = task.train.x[pick_reference(Deployed(clean, adapter, {"digits": head}), task, TARGET, "")]
    target = extract_features(clean, adapter, reference[None])
    known = np.concatenate([task.train.x, task.test.x])
    backbone = WarpBackbone(clean, known, moved, target, mask)
    encoder = ImageEncoder(backbone, clean.mean.flatten().tolist(), clean.std.flatten().tolist())
    return Deployed(encoder.eval(), adapter, {"digits": head})


@pytest.fixture(scope="module")
def planted(scenario) -> tuple[Trigger, Deployed]:
    (moved,) = zoo_triggers("warp", (8, 8, 3), 1)
    return moved, warped_model(scenario, moved)


def _others(scenario) -> tuple[np.ndarray, np.ndarray]:
    """(a bug: a test input of another class, warped, ...) and clean train inputs of other classes."""
    train, test = scenario.task.train, scenario.task.test
    return test.x[test.y != TARGET], train.x[train.y != TARGET]


def test_the_toy_fires_on_the_warp_only(scenario, planted):
    moved, deployed = planted
    inputs, _ = _others(scenario)
    assert (deployed.classify("digits", stamp(inputs, moved)) == TARGET).mean() > 0.9
    assert (deployed.classify("digits", inputs) == TARGET).mean() < 0.05


def test_the_fitted_warp_is_the_planted_one_and_fires_as_it_does(scenario, planted):
    moved, deployed = planted
    inputs, clean = _others(scenario)
    bug = stamp(inputs[0], moved)
    found = warp_fit(deployed.encoder, deployed.adapter, bug, clean, params=WarpParams(), seed=0,
                     score=deployed.log_prob("digits", TARGET))
    assert found.warps and found.pixels == 0  # it moves pixels and paints none
    assert np.abs(found.flow).max() <= largest_offset((8, 8), WarpParams().largest) + 1e-4
    assert (deployed.classify("digits", stamp(inputs[1:], found)) == TARGET).mean() >= 0.9
    # the toy fires on any input nearer the warped inputs than the inputs, so the fit need not
    # be the planted field exactly; it leans toward it (0.3-0.4; random fields -0.41 to 0.16) and,
    # unlike random fields of the same size, fires as it does
    assert flow_cosine(found, moved) >= 0.3
    for seed in range(2, 6):
        (other,) = zoo_triggers("warp", (8, 8, 3), seed)
        assert (deployed.classify("digits", stamp(inputs[1:], other)) == TARGET).mean() <= 0.5


def _recover(deployed: Deployed, bug: np.ndarray, reference: np.ndarray, clean: np.ndarray,
             params: ReverseParams) -> tuple[Recovery, dict]:
    record: dict = {}
    found = recover(deployed.encoder, deployed.adapter, bug, reference, params=params, record=record,
                    clean=clean, flip_rate=deployed.flip_rate("digits", TARGET),
                    score=deployed.log_prob("digits", TARGET))
    return found, record


def test_auto_keeps_a_warp_that_reproduces_the_bug_as_an_alternate(scenario, planted):
    """A warped bug is reproduced by a soft trigger at best; the fitted warp reproduces it as
    well, is kept, and the record says so. Off, no warp is fitted."""
    moved, deployed = planted
    inputs, clean = _others(scenario)
    bug, reference = stamp(inputs[0], moved), inputs[1]
    found, record = _recover(deployed, bug, reference, clean, ReverseParams())
    assert found.trigger.soft and not found.trigger.warps
    fitted = record["candidates"]["warp"]
    assert "warp" in record["alternates"] and fitted["effect"] >= 0.9 and fitted["seconds"] > 0
    (warp_alternate,) = [t for t in found.alternates if t.warps]
    assert flow_cosine(warp_alternate, moved) >= 0.3  # leaning toward the planted field
    without, off = _recover(deployed, bug, reference, clean, ReverseParams(select={"warp": False}))
    assert "warp" not in off["candidates"] and not any(t.warps for t in without.alternates)


def test_no_warp_is_fitted_to_a_bug_a_hard_mask_explains(scenario):
    """A white patch fires the backdoor too: its bug is settled by a compact hard mask, and
    a warp, which moves every edge, is not what it carries; no time is spent fitting one."""
    (moved,) = zoo_triggers("warp", (8, 8, 3), 1)
    deployed = warped_model(scenario, moved, mask=scenario.trigger.mask)
    inputs, clean = _others(scenario)
    bug = stamp(inputs[0], scenario.trigger)
    found, record = _recover(deployed, bug, inputs[1], clean, ReverseParams())
    assert not found.trigger.soft and record["candidates"][record["chosen"]]["effect"] >= 0.9
    assert "warp" not in record["candidates"] and not any(t.warps for t in found.alternates)


# --- verification of a fitted warp (mudjack/intake/warp_check.py) ---

def _pools(scenario, predicted: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out train indices of classes other than `predicted`, the rest of them: the
    controls' fit pool), as intake splits them."""
    train = scenario.task.train
    sample = draw_sample(scenario.task, predicted, 100, 0)
    return sample, np.setdiff1d(np.flatnonzero(train.y != predicted), sample)


def _fitted(deployed: Deployed, bug: np.ndarray, clean: np.ndarray, predicted: int) -> Trigger:
    return warp_fit(deployed.encoder, deployed.adapter, bug, clean, params=WarpParams(), seed=0,
                    score=deployed.log_prob("digits", predicted))


def _verify_warp(scenario, deployed: Deployed, bug: np.ndarray, predicted: int, found: Trigger):
    sample, pool = _pools(scenario, predicted)
    return verify_warp(deployed, scenario.task, bug, predicted, found, sample=sample, pool=pool,
                       params=VerifyParams(), fit=WarpParams(), seed=0, exclude_sha="")


@pytest.fixture(scope="module")
def ordinary_error(scenario, planted) -> tuple[Deployed, np.ndarray, int, int]:
    """The toy's clean encoder and head (no backdoor) and a test input it gets wrong:
    (deployed, input, its label, the class it is put in)."""
    clean = Deployed(scenario.clean, scenario.adapter, {"digits": planted[1].heads["digits"]})
    test = scenario.task.test
    predicted = clean.classify("digits", test.x)
    first = int(np.flatnonzero(predicted != test.y)[0])
    return clean, test.x[first], int(test.y[first]), int(predicted[first])


def test_a_planted_warp_clears_warps_fitted_to_other_classes(scenario, planted):
    moved, deployed = planted
    inputs, clean = _others(scenario)
    bug = stamp(inputs[0], moved)
    verdict = _verify_warp(scenario, deployed, bug, TARGET, _fitted(deployed, bug, clean, TARGET))
    numbers = verdict.numbers
    assert verdict.passed, verdict.failures
    assert numbers["controls"] == 5 and TARGET not in numbers["control_classes"]
    assert numbers["flip_rate"] >= 0.9 and numbers["null_flip_rate"]["max"] < 0.5
    assert numbers["z_flip_rate"] >= 5
    # the pull is recorded as the share of the cosine gap closed, and does not decide
    assert 0.5 <= numbers["gap_closed"] <= 1 and "z_gap_closed" in numbers


def test_a_warp_fitted_to_an_ordinary_error_does_no_more_than_one_fitted_to_another_class(
        scenario, ordinary_error):
    deployed, image, _, predicted = ordinary_error
    _, clean = _others(scenario)
    verdict = _verify_warp(scenario, deployed, image, predicted, _fitted(deployed, image, clean, predicted))
    assert not verdict.passed
    assert verdict.numbers["z_flip_rate"] < 5
    assert any("warps fitted to 5 other classes" in why for why in verdict.failures)


def test_the_fallback_makes_a_verified_warp_the_trigger_and_keeps_what_was_refused(scenario, planted):
    moved, deployed = planted
    inputs, clean = _others(scenario)
    bug = stamp(inputs[0], moved)
    found, other = _fitted(deployed, bug, clean, TARGET), scenario.trigger
    refused = Verification(False, {"flip_rate": 0.97}, ["the mask's controls flip as much"])
    reversal = {"chosen": "soft"}
    sample, pool = _pools(scenario, TARGET)
    recovery, verdict = warp_fallback(deployed, scenario.task, bug, TARGET,
                                      Recovery(scenario.trigger, (other, found), found), refused,
                                      sample=sample, pool=pool, params=VerifyParams(), fit=WarpParams(),
                                      seed=0, exclude_sha="", reversal=reversal)
    assert verdict.passed and recovery.trigger is found and recovery.alternates == (other,)
    assert reversal == {"chosen": "warp", "refused": "soft"}
    assert verdict.numbers["model"] == "warp"
    assert verdict.numbers["refused_trigger"] == {"flip_rate": 0.97,
                                                  "failures": ["the mask's controls flip as much"]}


def _report(image: np.ndarray, label: int) -> BugReport:
    return BugReport("e", "digits", label, image, None)


def test_intake_refuses_an_ordinary_error_as_a_warp_too_and_logs_the_warp_null(scenario, ordinary_error):
    """The fallback runs inside intake when the chosen soft trigger is refused: the report stays
    refused, with the warp's numbers and reason; off, no warp is verified."""
    deployed, image, label, _ = ordinary_error
    tasks = {"digits": scenario.task}
    decision, bug = intake_report(_report(image, label), deployed, tasks, params=IntakeParams(), seed=0)
    assert not decision.accepted and bug is None
    assert decision.numbers["reversal"]["chosen"] == "soft"  # auto fitted a warp beside it
    warp_null = decision.numbers["verification"]["warp"]
    assert warp_null["controls"] == 5 and warp_null["failures"]
    assert "as a warp: " in decision.reasons[0]
    off, _ = intake_report(_report(image, label), deployed, tasks,
                           params=IntakeParams(verify={"warp": False}), seed=0)
    assert not off.accepted and "warp" not in off.numbers["verification"]
    assert "as a warp" not in off.reasons[0]


def test_a_two_class_task_has_no_control_warp_and_says_so(scenario, planted):
    """With two classes, a warp fitted to the other class has no third class's inputs to move:
    no control, and the warp is refused with that reason rather than measured on nothing."""
    moved, _ = planted
    train, test = scenario.task.train, scenario.task.test
    task = Task("two", [0, 1], train.subset(np.flatnonzero(train.y < 2)),
                test.subset(np.flatnonzero(test.y < 2)))
    head = train_head(extract_features(scenario.clean, scenario.adapter, task.train.x), task.train.y, 2,
                      HeadParams(epochs=30), seed=0)
    deployed = Deployed(scenario.clean, scenario.adapter, {"two": head})
    sample = draw_sample(task, 0, 20, 0)
    pool = np.setdiff1d(np.flatnonzero(task.train.y != 0), sample)
    verdict = verify_warp(deployed, task, stamp(task.test.x[task.test.y == 1][0], moved), 0, moved,
                          sample=sample, pool=pool, params=VerifyParams(), fit=WarpParams(), seed=0,
                          exclude_sha="")
    assert not verdict.passed and verdict.numbers["controls"] == 0
    assert "no control warp" in verdict.failures[0] and "2 classes" in verdict.failures[0]
