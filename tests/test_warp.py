"""Warping triggers (WaNet): a fixed smooth displacement field that paints no pixel. Recovery
fits one (mudjack/intake/warp.py) and `auto` keeps it as an alternate when it reproduces the
bug as well as the chosen trigger does, so the patch also trains against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mudjack.attacks.zoo import zoo_triggers
from mudjack.deployed import Deployed
from mudjack.encoders import ImageEncoder
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake import pick_reference
from mudjack.intake.reverse import Recovery, ReverseParams, recover
from mudjack.intake.warp import WarpParams, largest_offset, warp_fit
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
