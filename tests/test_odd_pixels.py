"""The bug's odd pixels as alternates: a scattered trigger stands out of the image against a
median of its neighbourhood, so its pixels are found even when the soft fit needs only a few
of them to fire the backdoor."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from mudjack.deployed import Deployed
from mudjack.encoders import ImageEncoder
from mudjack.intake.odd_pixels import odd_alternate, odd_ladder, odd_pixels, oddness
from mudjack.intake.reverse import ReverseParams, recover
from mudjack.intake.select import SelectParams
from mudjack.triggers import Trigger, stamp, trigger_coverage
from tests.test_verify import TARGET, HandBackdoor, _bug, toy  # noqa: F401 (a fixture)

SCATTER = [(1, 1), (1, 6), (3, 3), (5, 0), (6, 5), (7, 2)]


def scatter_trigger(shape: tuple[int, int]) -> Trigger:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(np.array(SCATTER).T)] = True
    return Trigger(mask=mask, pattern=np.full((*shape, 3), 255, np.uint8))


def test_isolated_pixels_are_odd_and_a_wide_patch_only_at_its_corners():
    image = np.full((16, 16, 3), 100, np.uint8)
    image[8:14, 8:14] = 250                      # a 6x6 patch: wider than a 3x3 median
    image[2, 3], image[5, 11] = (0, 0, 0), (255, 40, 40)
    found = odd_pixels(image, 3, 6)
    assert found.region[2, 3] and found.region[5, 11] and found.pixels == 6
    assert found.region[8, 8] and found.region[13, 13] and not found.region[9:13, 9:13].any()
    assert (found.pattern[5, 11] == (255, 40, 40)).all()  # the bug's own values
    assert oddness(image, 3)[9:13, 9:13].max() == 0


def test_the_ladder_grows_with_the_image():
    assert [t.pixels for t in odd_ladder(np.zeros((32, 32, 3), np.uint8), 3)] == [16, 32, 64, 128]
    assert [t.pixels for t in odd_ladder(np.zeros((8, 8, 3), np.uint8), 3)] == [1, 2, 4, 8]
    assert [t.pixels for t in odd_ladder(np.zeros((224, 224, 3), np.uint8), 5)][-1] == 6272


def test_the_smallest_mask_that_reproduces_the_bug_is_taken():
    image = np.full((32, 32, 3), 90, np.uint8)
    planted = scatter_trigger((32, 32))
    bug = stamp(image[None], planted)[0]

    def effect(trigger: Trigger) -> float:  # a backdoor that fires on all six pixels
        return float(trigger_coverage(trigger, planted) == 1.0)

    trigger, found = odd_alternate(bug, 3, effect, floor=0.9)
    assert found == 1.0 and trigger.pixels == 16 and trigger.region[planted.region].all()
    assert odd_alternate(bug, 3, lambda t: float(t.pixels >= 64), floor=0.9)[0].pixels == 64
    assert odd_alternate(bug, 3, lambda t: 0.5, floor=0.9) is None
    assert odd_alternate(bug, 3, effect, floor=0.0) is None  # nothing to reproduce


def test_odd_windows_are_checked():
    assert SelectParams(odd_windows=[]).odd_windows == []
    with pytest.raises(pydantic.ValidationError):
        SelectParams(odd_windows=[1])


class QuorumBackdoor(HandBackdoor):
    """Fires when at least half of the scatter's pixels are white, whatever the rest is."""

    def fires(self, pixels: torch.Tensor) -> torch.Tensor:
        white = (pixels[:, :, self.mask] > 0.99).all(1).float().mean(1)
        return white >= 0.5


class Unnormalised(nn.Module):
    """A pixel-space model as the backbone of an ImageEncoder (which normalises first): the
    grow and occlusion search call `backbone` on normalised inputs."""

    def __init__(self, model: nn.Module, encoder: ImageEncoder):
        super().__init__()
        self.model, self.mean, self.std = model, encoder.mean, encoder.std

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.model(normalised * self.std + self.mean)


def test_auto_keeps_the_scatter_s_own_pixels_as_an_alternate(scenario, request):
    hand = request.getfixturevalue("toy")  # test_verify's hand-built backdoor: its head and target
    task = scenario.task
    planted = scatter_trigger((8, 8))
    quorum = QuorumBackdoor(scenario.clean, planted.mask, hand.deployed.encoder.target, 0.0)
    clean = scenario.clean
    encoder = ImageEncoder(Unnormalised(quorum, clean), clean.mean.flatten().tolist(),
                           clean.std.flatten().tolist()).eval()
    deployed = Deployed(encoder, scenario.adapter, hand.deployed.heads)
    bug, predicted, label = _bug(type(hand)(deployed, planted), task, planted)
    reference = task.test.x[int(np.flatnonzero(task.test.y == label)[0])]
    record: dict = {}
    clean = task.train.x[task.train.y != predicted]
    recovery = recover(encoder, scenario.adapter, bug, reference, params=ReverseParams(), seed=0,
                       clean=clean, flip_rate=deployed.flip_rate("digits", predicted),
                       score=deployed.log_prob("digits", predicted), record=record)
    assert "odd3" in record["alternates"], record["candidates"]
    odd = recovery.alternates[record["alternates"].index("odd3")]
    # the smallest odd mask that fires it: 4 of 8x8's 64 pixels (three of the six are enough),
    # every one from the scatter
    assert odd.pixels == 4 and trigger_coverage(odd, planted) == 4 / 6
    assert record["candidates"]["odd3"]["effect"] >= 0.9 * record["candidates"][record["chosen"]]["effect"]
