"""Alternate triggers: intake keeps every candidate that reproduces the bug nearly as well as
the chosen one, the registry stores them, and the patch trains against each of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mudjack.bugs import Bug, load_bugs, save_bug
from mudjack.evaluation import AttackSpec, retrain_and_evaluate
from mudjack.heads import HeadParams
from mudjack.intake.fill import colour_patches, filled_alternate
from mudjack.intake.select import alternates, padded
from mudjack.patching import PatchInputs, run_patch
from mudjack.patching.mudjacking import BugViews, MudjackingParams, build_views
from mudjack.triggers import Trigger, patch_trigger, stamp

SHAPE = (8, 8, 3)


def half(trigger: Trigger, column: int) -> Trigger:
    """One column of a 2x2 patch trigger at (6, 6)."""
    mask = np.zeros_like(trigger.mask)
    mask[6:8, 6 + column] = True
    return Trigger(mask=mask, pattern=trigger.pattern)


def test_alternates_are_the_candidates_close_to_the_chosen_one():
    numbers = {"grow": {"effect": 0.92}, "blend": {"effect": 0.5}, "soft": {"effect": 1.0},
               "soft_binarised": {"effect": 0.9}}
    assert alternates(numbers, "soft", keep=0.9) == ["grow", "soft_binarised"]
    assert alternates(numbers, "soft", keep=0.0) == ["grow", "blend", "soft_binarised"]
    assert alternates(numbers, "soft", keep=1.01) == []
    padded_too = {**numbers, "soft_padded": {"effect": 1.0}, "grow_padded": {"effect": 1.0}}
    assert alternates(padded_too, "soft", keep=0.9) == ["grow", "soft_binarised", "soft_padded"]


def test_a_hard_trigger_grows_by_half_its_side_with_the_bug_pixels():
    image = np.arange(192, dtype=np.uint8).reshape(SHAPE)
    square = patch_trigger(SHAPE, 2, 3, 3)
    grown = padded(square, image, ratio=0.5)
    assert grown.pixels == 16 and grown.region[2:6, 2:6].all() and not grown.soft
    assert (grown.pattern[2, 2] == image[2, 2]).all()  # filled from the bug input
    assert padded(patch_trigger(SHAPE, 4, 2, 2), image, ratio=0.5).pixels == 64  # 4 px side: 2 px more
    assert padded(square, image, ratio=0.0) is None
    assert padded(Trigger(mask=np.full(SHAPE[:2], 0.2, np.float32), pattern=image), image, ratio=0.5) is None


def test_the_registry_keeps_hard_and_soft_alternates(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    square = patch_trigger(SHAPE, 2, 6, 6)
    blend = Trigger(mask=np.full(SHAPE[:2], 0.2, np.float32), pattern=image)
    bug = Bug("b1", "digits", 3, 0, image, image, square, alternates=(half(square, 0), blend))
    save_bug(bug, tmp_path)
    (loaded,) = load_bugs(tmp_path)
    assert len(loaded.alternates) == 2 and loaded.triggers[0].mask.dtype == bool
    assert (loaded.alternates[0].mask == half(square, 0).mask).all()
    assert loaded.alternates[1].soft and np.allclose(loaded.alternates[1].alpha, 0.2)
    save_bug(dataclasses.replace(bug, id="b2", alternates=()), tmp_path)
    assert load_bugs(tmp_path)[1].alternates == ()


def test_each_alternate_is_an_entry_of_the_patch_views(scenario):
    image = scenario.task.test.x[0]
    square = scenario.trigger
    bug = Bug("b", "digits", 3, 0, image, scenario.task.test.x[1], half(square, 0),
              alternates=(half(square, 1),))
    views = BugViews([bug], scenario.adapter, torch.device("cpu"))
    assert views.count == 2
    assert views.masks[0, 0, 6:8, 6].all() and not views.masks[0, 0, 6:8, 7].any()
    assert views.masks[1, 0, 6:8, 7].all() and not views.masks[1, 0, 6:8, 6].any()
    assert BugViews([bug], scenario.adapter, torch.device("cpu"), alternates=False).count == 1
    shadow = scenario.adapter.preprocess(scenario.shadow[:4])
    stacked = build_views(shadow, views, views=3, augment=None)
    assert len(stacked) == 2 * 4 + 3 * 2 * 3  # x, x⊕t, and K views of x_b, x_r, x_r⊕t per entry


def test_a_warp_alternate_warps_the_shadow_views_as_stamping_does(scenario):
    from mudjack.attacks.zoo import zoo_triggers

    (moved,) = zoo_triggers("warp", SHAPE, 3)
    image, reference = scenario.task.test.x[0], scenario.task.test.x[1]
    bug = Bug("b", "digits", 3, 0, image, reference, half(scenario.trigger, 0), alternates=(moved,))
    views = BugViews([bug], scenario.adapter, torch.device("cpu"))
    assert views.count == 2 and views.flows is not None and not views.flows[0].any()
    shadow = scenario.shadow[:4]
    stacked = build_views(scenario.adapter.preprocess(shadow), views, views=1, augment=None)
    triggered = stacked[4:8]  # x⊕t: the shadow inputs take the entries in turn
    expected = scenario.adapter.preprocess(stamp(shadow, bug.triggers[0])[[0, 2]])
    assert torch.allclose(triggered[[0, 2]], expected, atol=0.5 / 255 + 1e-6)
    warped = scenario.adapter.preprocess(stamp(shadow, moved)[[1, 3]])
    assert torch.allclose(triggered[[1, 3]], warped, atol=0.5 / 255 + 1e-6)  # stamping rounds to bytes
    assert not torch.allclose(triggered[[1, 3]], stacked[[1, 3]])  # it moved them
    plain = BugViews([dataclasses.replace(bug, alternates=())], scenario.adapter, torch.device("cpu"))
    assert plain.flows is None  # nothing warps: no resampling at all


@pytest.fixture(scope="module")
def split_bug(scenario, deployed):
    """A genuine bug whose chosen trigger is one column of the true 2x2 patch, the other its alternate."""
    from tests.test_method import genuine_index, make_report

    report = make_report(scenario, genuine_index(scenario, deployed), triggered=True)
    reference = scenario.task.test.x[int(np.flatnonzero(scenario.task.test.y == report.label)[0])]
    return Bug("split", "digits", report.label, scenario.target, report.image, reference,
               half(scenario.trigger, 0), alternates=(half(scenario.trigger, 1),))


def test_patching_against_the_alternates_too_removes_what_the_chosen_half_leaves(scenario, split_bug):
    attack = AttackSpec(scenario.trigger, scenario.target, "truth")
    asr = {}
    for use in (False, True):
        params = MudjackingParams(epochs=20, alternates=use).model_dump()
        inputs = PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [split_bug])
        patched = run_patch("mudjacking", inputs, params, seed=0)
        assert patched.info["triggers"] == (2 if use else 1)
        asr[use] = retrain_and_evaluate(patched.encoder, scenario.adapter, scenario.task, attack,
                                        HeadParams(epochs=60))[1]["asr"]
    assert asr[True] <= 0.2 and asr[True] <= asr[False] - 0.05, asr  # measured: 0.14 against 0.23


def test_a_part_of_a_solid_patch_is_filled_to_the_whole_patch():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)  # no pixel is near-white
    image[10:16, 12:18] = 250                                    # a 6x6 white patch
    part = patch_trigger((32, 32, 3), 3, 9, 11, value=250)      # 3x3 over its corner: 4 px white
    patches = list(colour_patches(part, image, tolerance=0.1, max_fraction=0.35))
    white = [p for p in patches if (p.pattern[p.region] == 250).all()]
    assert len(white) == 1 and white[0].pixels == 36 and white[0].region[10:16, 12:18].all()

    def effect(found: Trigger) -> float:  # a stand-in for the flip rate: the white share
        return float((found.pattern[found.region] >= 240).all(axis=-1).mean())

    best = filled_alternate(part, image, effect, tolerance=0.1, max_fraction=0.35)
    assert best is not None and best[0].pixels == 36 and best[1] == 1.0
    assert filled_alternate(part, image, effect, tolerance=0.0, max_fraction=0.35) is None


def test_a_patch_touching_a_face_of_its_own_colour_is_cut_to_the_masks_pixels_of_that_colour():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    image[:, :20] = 255                        # a white face, 62 % of the image
    image[10:16, 20:26] = 255                  # a 6x6 white patch touching it
    square = patch_trigger((32, 32, 3), 10, 8, 16)  # over both: 40 px of face, the patch, 24 others
    (cut,) = [p for p in colour_patches(square, image, tolerance=0.1, max_fraction=0.35)
              if (p.pattern[p.region] == 255).all()]
    assert cut.pixels == 40 + 36 and cut.region[10:16, 20:26].all()
    assert not (cut.region & ~square.region).any()  # nothing of the face outside the mask


def test_no_colour_patch_from_a_soft_trigger_or_the_image_background():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    image[:, :20] = 255                                           # a white background
    square = patch_trigger((32, 32, 3), 4, 4, 4)
    soft = Trigger(mask=np.full((32, 32), 0.2, np.float32), pattern=image)
    assert list(colour_patches(soft, image, tolerance=0.1, max_fraction=0.35)) == []
    assert list(colour_patches(square, image, tolerance=0.1, max_fraction=0.35)) == []  # 62 % > 35 %
    (whole,) = colour_patches(square, image, tolerance=0.1, max_fraction=0.7)
    assert whole.pixels == 32 * 20


def test_a_fitted_blend_is_also_patched_against_at_stronger_alphas(scenario):
    image, reference = scenario.task.test.x[0], scenario.task.test.x[1]
    blend = Trigger(mask=np.full(SHAPE[:2], 0.2, np.float32), pattern=image)
    local = np.zeros(SHAPE[:2], np.float32)
    local[:2, :2] = 0.3  # soft, but on a corner: not a blend, never scaled
    bug = Bug("b", "digits", 3, 0, image, reference, half(scenario.trigger, 0),
              alternates=(blend, Trigger(mask=local, pattern=image)))
    cpu = torch.device("cpu")
    assert BugViews([bug], scenario.adapter, cpu).count == 3
    views = BugViews([bug], scenario.adapter, cpu, blend_scales=[2.0, 10.0])
    assert views.count == 5
    assert torch.allclose(views.masks[3], torch.tensor(0.4)) and (views.masks[4] == 1).all()
    assert torch.equal(views.patterns[3], views.patterns[1])  # the same pattern, stronger
    assert BugViews([bug], scenario.adapter, cpu, alternates=False, blend_scales=[2.0]).count == 1
    assert MudjackingParams().blend_scales == [2.0]
    with pytest.raises(ValueError):
        MudjackingParams(blend_scales=[1.0])  # a scale must strengthen
