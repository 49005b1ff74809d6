"""Trigger recovery that can express what it finds: the soft trigger, the selection among
candidates (method `auto`) and the settings derived from the input size.

Every zoo image family is planted on a hand-built toy model (tests/helpers/toy.py) and
recovered by `auto` from one bug input, its reference and clean inputs of other classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mudjack.attacks.zoo import zoo_triggers
from mudjack.intake import reverse
from mudjack.intake.grow import candidate_masks
from mudjack.intake.occlusion import occlusion_map
from mudjack.intake.residual import bug_residual
from mudjack.intake.reverse import ReverseParams, reverse_engineer
from mudjack.intake.reverse import recover as recover_trigger
from mudjack.intake.select import mask_size, select_trigger
from mudjack.intake.settings import resolve
from mudjack.triggers import (
    Trigger,
    patch_trigger,
    stamp,
    trigger_correlation,
    trigger_coverage,
    trigger_iou,
)
from tests.helpers.toy import SHAPE, Toy, toy_backdoor

AUTO = ReverseParams(method="auto")


def recover(toy: Toy, params: ReverseParams = AUTO) -> tuple[Trigger, dict]:
    record: dict = {}
    deployed = toy.deployed
    found = reverse_engineer(deployed.encoder, deployed.adapter, toy.bug, toy.reference, params=params,
                             clean=toy.clean, flip_rate=deployed.flip_rate("toy", 0),
                             score=deployed.log_prob("toy", 0), record=record)
    return found, record


def test_the_toy_model_fires_on_its_trigger_only():
    toy = toy_backdoor(zoo_triggers("blend", SHAPE, 0))
    assert len(toy.clean) > 200
    assert (toy.deployed.classify("toy", stamp(toy.clean, toy.triggers[0])) == 0).mean() == 1.0
    assert (toy.deployed.classify("toy", toy.clean) == 0).mean() == 0.0


@pytest.mark.parametrize("family", ["patch", "line", "scatter", "dual"])
def test_auto_recovers_a_hard_trigger_as_a_compact_mask(family):
    triggers = zoo_triggers(family, SHAPE, 1)
    toy = toy_backdoor(triggers, seed=1)
    found, record = recover(toy)
    truth = triggers[0]
    hard = ("grow", "soft_binarised")  # or the solid-colour patch of one
    assert record["chosen"] in (*hard, *(f"{h}_filled" for h in hard)) and not found.soft, record
    assert trigger_coverage(found, truth) >= 0.9 and trigger_iou(found, truth) >= 0.4
    assert found.pixels <= 3 * truth.pixels  # compact: not the whole image
    if family == "dual":  # the bug carries the first trigger only: the second is not recovered
        assert trigger_coverage(found, triggers[1]) <= 0.2
        # grow's 4 pixels flip nothing; the solid colour they are part of is the whole trigger
        assert record["candidates"]["grow"]["effect"] == 0.0 and record["chosen"] == "grow_filled"
        assert trigger_iou(found, truth) == 1.0


@pytest.mark.parametrize("seed", [1, 2])  # random colours at alpha 0.70, a solid one at 0.64
def test_auto_recovers_a_translucent_patch_as_a_compact_mask_on_it(seed):
    truth = zoo_triggers("translucent", SHAPE, seed)[0]
    found, record = recover(toy_backdoor([truth], seed=seed))
    assert record["candidates"][record["chosen"]]["effect"] >= 0.9
    assert not found.soft and found.pixels <= 3 * truth.pixels  # its place: not a blend everywhere
    assert trigger_iou(found, truth) >= 0.5 and trigger_coverage(found, truth) >= 0.75


@pytest.mark.parametrize("seed", [3, 7])
def test_the_scan_candidate_finds_a_translucent_patch_the_occlusion_ranking_misses(seed):
    truth = zoo_triggers("translucent", SHAPE, seed)[0]
    toy = toy_backdoor([truth], seed=seed)

    def alone(name: str) -> ReverseParams:
        return ReverseParams(method="auto", select={"candidates": [name], "odd_windows": []})

    _, grown = recover(toy, alone("grow"))
    found, scanned = recover(toy, alone("scan"))
    assert grown["candidates"]["grow"]["effect"] <= 0.1  # the occlusion map peaks off the patch
    assert scanned["chosen"] == "scan" and scanned["candidates"]["scan"]["effect"] >= 0.9
    assert not found.soft and found.pixels <= 3 * truth.pixels and trigger_iou(found, truth) >= 0.5


def test_grow_and_scan_share_one_occlusion_map_per_report(monkeypatch):
    """Scan ranks on grow's occlusion map (its ties): computed once when both are candidates,
    with the same candidates and numbers as when each runs alone, and kept out of the record."""
    truth = zoo_triggers("translucent", SHAPE, 3)[0]
    toy = toy_backdoor([truth], seed=3)
    calls = []
    monkeypatch.setattr(reverse, "occlusion_map", lambda *a, **k: calls.append(1) or occlusion_map(*a, **k))

    def only(*names: str) -> dict:
        select = {"candidates": list(names), "odd_windows": [], "enough": 1.01, "warp": False}
        return recover(toy, ReverseParams(method="auto", select=select))[1]

    both, grown, scanned = only("grow", "scan"), only("grow"), only("scan")
    assert len(calls) == 3  # one for both, one for each alone
    assert both["candidates"] == {**grown["candidates"], **scanned["candidates"]}
    assert reverse.OCCLUSION_MAP not in both
    record: dict = {}
    reverse_engineer(toy.deployed.encoder, toy.deployed.adapter, toy.bug, toy.reference,
                     params=ReverseParams(method="grow"), clean=toy.clean, record=record)
    assert reverse.OCCLUSION_MAP not in record and len(calls) == 4
    shared: dict = {}  # in one record, another window or stride is another map
    for window, stride in ((3, 1), (3, 1), (2, 1), (3, 2)):
        reverse._occlusion_scores(toy.deployed.encoder, toy.deployed.adapter, toy.bug, toy.reference,
                                  ReverseParams(window=window, stride=stride), shared)
    assert len(calls) == 7 and len(shared[reverse.OCCLUSION_MAP]) == 3


def test_auto_recovers_a_blend_as_a_small_alpha_everywhere():
    truth = zoo_triggers("blend", SHAPE, 1)[0]
    blend_first = ReverseParams(method="auto", select={"candidates": ["grow", "blend", "soft"]})
    found, record = recover(toy_backdoor([truth], seed=1), blend_first)
    assert record["chosen"] == "blend" and found.soft
    chosen = record["candidates"]["blend"]
    assert chosen["effect"] >= 0.9 and record["candidates"]["grow"]["effect"] <= 0.2
    assert record["skipped"] == ["soft"]  # the blend was enough: the per-pixel fit never ran
    assert trigger_correlation(found, truth) >= 0.25
    assert np.ptp(found.alpha) == 0 and 0.05 <= found.alpha.max() <= 0.5  # one small alpha everywhere


@pytest.mark.parametrize("seed", [0, 3])
def test_auto_recovers_a_blended_picture_as_a_small_alpha_everywhere(seed):
    truth = zoo_triggers("picture", SHAPE, seed)[0]
    blend_first = ReverseParams(method="auto", select={"candidates": ["grow", "blend", "soft"]})
    found, record = recover(toy_backdoor([truth], seed=seed), blend_first)
    assert record["chosen"] == "blend" and record["candidates"]["grow"]["effect"] <= 0.2
    assert record["candidates"]["blend"]["effect"] >= 0.9
    assert np.ptp(found.alpha) == 0 and 0.05 <= found.alpha.max() <= 0.5
    assert trigger_correlation(found, truth) >= 0.7  # its outlines and flat colours, found


@pytest.mark.parametrize("seed", [4, 7])  # the zoo's blend draws a smooth colour field at these seeds
def test_auto_recovers_a_smooth_blend_as_a_colour_grid_everywhere(seed):
    truth = zoo_triggers("blend", SHAPE, seed)[0]
    assert np.abs(np.diff(truth.pattern.astype(int), axis=0)).mean() < 30  # smooth, not noise
    smooth_first = ReverseParams(method="auto", smooth={"grid": 8},  # derived: 4 at 16 px
                                 select={"candidates": ["grow", "smooth", "blend"]})
    found, record = recover(toy_backdoor([truth], seed=seed), smooth_first)
    assert record["chosen"] == "smooth" and record["skipped"] == ["blend"]
    assert record["candidates"]["smooth"]["effect"] >= 0.9 and record["candidates"]["grow"]["effect"] <= 0.2
    assert np.ptp(found.alpha) == 0 and 0.05 <= found.alpha.max() <= 0.5  # one small alpha everywhere
    assert trigger_correlation(found, truth) >= 0.6
    # 8 cells a side, interpolated: no pixel's colour strays from its neighbours' like noise's
    noise = zoo_triggers("blend", SHAPE, 0)[0].pattern
    assert bug_residual(found.pattern, 3).std() < 0.4 * bug_residual(noise, 3).std()


@pytest.mark.parametrize("seed", [0, 1, 4])  # two sides: 2 px top and bottom, 1 px left and right, a corner
def test_auto_recovers_a_frame_along_the_border(seed):
    truth = zoo_triggers("frame", SHAPE, seed)[0]
    found, record = recover(toy_backdoor([truth], seed=seed))
    assert record["candidates"][record["chosen"]]["effect"] >= 0.9
    assert trigger_coverage(found, truth) >= 0.9 and found.pixels <= 3 * truth.pixels
    if not found.soft:  # a hard mask is the frame itself; a soft one covers it, fading inwards
        assert trigger_iou(found, truth) >= 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_recovers_stripes_blended_everywhere_as_a_soft_trigger(seed):
    truth = zoo_triggers("stripes", SHAPE, seed)[0]
    found, record = recover(toy_backdoor([truth], seed=seed))
    assert record["chosen"] == "soft" and found.soft
    assert record["candidates"]["soft"]["effect"] >= 0.9
    assert record["candidates"]["grow"]["effect"] <= 0.1  # no compact region does it
    assert trigger_correlation(found, truth) >= 0.4 and found.pixels >= 0.5 * truth.pixels


def test_auto_fits_every_candidate_when_none_is_enough():
    truth = zoo_triggers("blend", SHAPE, 1)[0]
    params = ReverseParams(method="auto", soft={"steps": 20}, select={"enough": 1.01})
    _, record = recover(toy_backdoor([truth], seed=1), params)
    assert list(record["candidates"]) == ["grow", "grow_padded",  # hard ones padded too, and
                                          "grow_filled", "grow_filled_padded",  # their colour patches
                                          "soft_binarised", "soft_binarised_padded",
                                          "soft_binarised_filled", "soft_binarised_filled_padded",
                                          "soft", "scan", "scan_padded", "scan_filled",
                                          "scan_filled_padded", "residual", "smooth", "blend",
                                          "warp"]  # fitted when the chosen is soft: an alternate at most
    assert record["skipped"] == []


def test_auto_keeps_the_candidates_that_reproduce_the_bug_nearly_as_well_as_alternates():
    truth = zoo_triggers("patch", SHAPE, 1)[0]
    toy = toy_backdoor([truth], seed=1)
    deployed = toy.deployed
    for keep in (0.0, 0.9, 1.5):
        record: dict = {}
        params = ReverseParams(method="auto", soft={"steps": 20}, select={"enough": 1.01, "keep": keep})
        found = recover_trigger(deployed.encoder, deployed.adapter, toy.bug, toy.reference, params=params,
                                clean=toy.clean, flip_rate=deployed.flip_rate("toy", 0),
                                score=deployed.log_prob("toy", 0), record=record)
        numbers, chosen = record["candidates"], record["chosen"]
        floor = keep * numbers[chosen]["effect"]
        others = [n for n in numbers if n != chosen and not n.endswith("_padded")] + [f"{chosen}_padded"]
        close = [n for n in numbers if n in others and numbers[n]["effect"] >= floor]
        assert record["alternates"] == close and len(found.alternates) == len(close)
        assert "alternate_triggers" not in record  # the record stays numbers (JSON)
        if keep == 0.0:  # every other candidate, and the chosen square grown (scored, never chosen),
            assert len(close) == 7 and f"{chosen}_padded" in close  # not the others grown
            assert len(numbers) == 10 and "warp" not in numbers  # a hard mask explains it: no warp fit
        if keep > 1:
            assert found.alternates == ()


def test_a_square_cannot_express_a_blend():
    truth = zoo_triggers("blend", SHAPE, 2)[0]
    toy = toy_backdoor([truth], seed=2)
    found, _ = recover(toy, ReverseParams(method="grow"))
    assert not found.soft and (toy.deployed.classify("toy", stamp(toy.clean, found)) == 0).mean() <= 0.3


def test_the_classifier_score_reads_features_and_agrees_with_the_flip_rate():
    toy = toy_backdoor(zoo_triggers("patch", SHAPE, 0))
    deployed = toy.deployed
    pixels = deployed.adapter.preprocess(stamp(toy.clean[:32], toy.triggers[0]))
    with torch.no_grad():
        log_p = deployed.log_prob("toy", 0)(deployed.encoder.eval()(pixels))
        full = torch.log_softmax(deployed.heads["toy"](deployed.encoder(pixels)), dim=1)
    assert log_p.shape == (32,) and torch.allclose(log_p, full[:, 0])
    assert deployed.flip_rate("toy", 0)(pixels) == float((full.argmax(1) == 0).float().mean())


def test_soft_leaves_the_encoder_untouched():
    toy = toy_backdoor(zoo_triggers("patch", SHAPE, 0))
    encoder = toy.deployed.encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    recover(toy, ReverseParams(method="soft", soft={"steps": 3}))
    assert all((before[k] == v).all() for k, v in encoder.state_dict().items())
    assert not encoder.training  # intake evaluates in eval mode


def test_selection_weighs_the_effect_against_the_mask_size():
    small = Trigger(mask=np.eye(4, dtype=bool), pattern=np.zeros((4, 4, 1), np.uint8))
    blend = Trigger(mask=np.full((4, 4), 0.5, np.float32), pattern=np.zeros((4, 4, 1), np.uint8))
    assert mask_size(small) == 0.25 and mask_size(blend) == 0.5
    effects = {id(small): 0.8, id(blend): 1.0}
    candidates = [("small", small), ("blend", blend)]
    chosen, found, numbers = select_trigger(candidates, lambda t: effects[id(t)], size_penalty=1.0)
    assert chosen == "small" and found is small
    assert numbers["small"]["score"] == 0.55 and numbers["blend"]["score"] == 0.5
    assert numbers["blend"]["soft"] and numbers["small"]["pixels"] == 4
    assert select_trigger(candidates, lambda t: effects[id(t)], size_penalty=0.0)[0] == "blend"
    tie = select_trigger([("a", small), ("b", small)], lambda t: 1.0, size_penalty=0.5)[0]
    assert tie == "a"  # the first candidate wins ties


def test_selection_stops_at_the_first_candidate_that_is_enough():
    small = Trigger(mask=np.eye(4, dtype=bool), pattern=np.zeros((4, 4, 1), np.uint8))
    fitted = []

    def candidates():
        for name in ("a", "b", "c"):
            fitted.append(name)
            yield name, small

    effects = iter([0.5, 0.95, 1.0])  # the scores too: no size penalty
    chosen, _, numbers = select_trigger(candidates(), lambda t: next(effects), size_penalty=0.0, enough=0.9)
    assert chosen == "b" and list(numbers) == ["a", "b"] and fitted == ["a", "b"]


def test_only_a_verified_candidate_ends_the_search_or_is_chosen():
    small = Trigger(mask=np.eye(4, dtype=bool), pattern=np.zeros((4, 4, 1), np.uint8))
    triggers = {name: Trigger(mask=small.mask.copy(), pattern=small.pattern) for name in "abc"}
    effects = {id(triggers["a"]): 1.0, id(triggers["b"]): 0.95, id(triggers["c"]): 0.5}
    asked = []

    def accept(trigger: Trigger) -> bool:
        asked.append(trigger)
        return trigger is not triggers["a"]  # "a" reproduces the bug best but is no backdoor

    chosen, found, numbers = select_trigger(triggers.items(), lambda t: effects[id(t)], size_penalty=0.0,
                                            enough=0.9, accept=accept)
    assert chosen == "b" and found is triggers["b"] and list(numbers) == ["a", "b"]  # "c" never fitted
    assert numbers["a"]["verified"] is False and numbers["b"]["verified"] is True
    assert asked == [triggers["a"], triggers["b"]]  # each verified once
    # none verified: the best-scoring one comes back (and the verification rejects the report)
    chosen, _, numbers = select_trigger(triggers.items(), lambda t: effects[id(t)], size_penalty=0.0,
                                        enough=0.9, accept=lambda t: False)
    assert chosen == "a" and list(numbers) == ["a", "b", "c"]
    assert all(found["verified"] is False for found in numbers.values())


def test_a_companion_that_is_enough_ends_the_search_but_is_never_chosen():
    small = Trigger(mask=np.eye(4, dtype=bool), pattern=np.zeros((4, 4, 1), np.uint8))
    grown = Trigger(mask=np.ones((4, 4), dtype=bool), pattern=np.zeros((4, 4, 1), np.uint8))
    fitted = []

    def candidates():
        for name in ("grow", "blend"):
            fitted.append(name)
            yield name, small

    effects = {id(small): 0.85, id(grown): 1.0}  # no size penalty: scores are the effects
    chosen, found, numbers = select_trigger(candidates(), lambda t: effects[id(t)], size_penalty=0.0,
                                            enough=0.9, companion=lambda t: grown)
    assert fitted == ["grow"] and chosen == "grow" and found is small
    assert numbers["grow_padded"]["score"] == 1.0
    effects[id(grown)] = 0.8  # short of enough: the search goes on
    fitted.clear()
    select_trigger(candidates(), lambda t: effects[id(t)], size_penalty=0.0, enough=0.9,
                   companion=lambda t: grown)
    assert fitted == ["grow", "blend"]


def test_auto_cannot_be_its_own_candidate():
    with pytest.raises(ValidationError, match="not registered reversal methods"):
        ReverseParams(method="auto", select={"candidates": ["grow", "auto"]})
    with pytest.raises(ValidationError, match="not registered"):
        ReverseParams(select={"candidates": ["nope"]})


@pytest.mark.parametrize(("side", "window", "stride", "scan", "scan_stride", "grid"), [
    (8, 2, 1, [2, 4], 1, 2),        # the digits default's hand-tuned window; 4-px colour cells
    (32, 5, 1, [6, 10, 14], 2, 8),  # scenarios/resnet20-gtsrb.yaml's window, scan and stride
    (64, 10, 2, [12, 20, 28], 4, 8),
    (224, 35, 7, [42, 70, 98], 14, 8),  # a Hugging Face vision model's input
])
def test_auto_settings_derive_from_the_input_side(side, window, stride, scan, scan_stride, grid):
    params = ReverseParams(grow={"scan": "auto"})
    resolved, record = resolve(params, (side, side, 3))
    assert (resolved.window, resolved.stride, resolved.grow.scan, resolved.grow.scan_stride,
            resolved.smooth.grid) == (window, stride, scan, scan_stride, grid)
    assert record == {"input_side": side, "window": window, "stride": stride, "scan": scan,
                      "scan_stride": scan_stride, "grid": grid,
                      "derived": ["window", "stride", "scan", "scan_stride", "grid"]}


def test_settings_a_scenario_sets_are_kept_and_not_marked_derived():
    params = ReverseParams(window=3, grow={"scan": [4], "scan_stride": 3}, smooth={"grid": 5})
    resolved, record = resolve(params, (32, 48, 3))
    kept = (resolved.window, resolved.grow.scan, resolved.grow.scan_stride, resolved.smooth.grid)
    assert kept == (3, [4], 3, 5)
    assert record["derived"] == ["stride"] and record["input_side"] == 32


def test_settings_larger_than_the_input_are_taken_as_its_side():
    params = ReverseParams(window=4096, stride=4096, grow={"scan": [500], "scan_stride": 900, "pad": 1024,
                                                          "min_pixels": 10**9}, smooth={"grid": 256})
    resolved, _ = resolve(params, (8, 8, 3))
    grow = resolved.grow
    assert (resolved.window, resolved.stride, grow.scan, grow.scan_stride, grow.pad) == (8, 8, [8], 8, 8)
    assert resolved.smooth.grid == 8
    assert len(candidate_masks(np.ones((8, 8)), grow)) >= 1  # min_pixels past the largest: one square


@pytest.mark.parametrize("bad", [{"window": 10**9}, {"select": {"candidates": []}},
                                 {"select": {"candidates": ["blend", "blend"]}}, {"select": {"pad": 1e9}},
                                 {"soft": {"steps": 10**9}}, {"inversion": {"steps": 10**9}},
                                 {"smooth": {"grid": 10**6}}, {"grow": {"pad": 10**9}}])
def test_reversal_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        ReverseParams(**bad)


def test_the_decision_records_the_settings_and_the_candidates_fitted(scenario, deployed):
    from mudjack.intake import IntakeParams, intake_report
    from mudjack.reports import BugReport
    from tests.test_trust import genuine_inputs

    (image,), (label,) = genuine_inputs(scenario, deployed, 1)
    report = BugReport("r", "digits", int(label), image, None)
    params = IntakeParams(reverse=AUTO)
    torch.manual_seed(0)
    decision, _ = intake_report(report, deployed, {"digits": scenario.task}, params=params,
                                truth=scenario.trigger)
    reversal = decision.numbers["reversal"]
    assert reversal["settings"]["window"] == 2 and "window" in reversal["settings"]["derived"]
    odd = {name for name in reversal["candidates"] if name.startswith("odd")}  # recorded when kept
    assert set(reversal["candidates"]) - odd == {"grow", "grow_padded"}  # hard: no warp fitted
    assert reversal["skipped"] == ["soft", "scan", "residual", "smooth", "blend"]
    assert odd <= set(reversal["alternates"])
    assert reversal["chosen"] == "grow" and reversal["select_samples"] > 0
    assert decision.numbers["coverage"] == 1.0
    grown = reversal["candidates"]["grow_padded"]  # the square grown by half its side, from the bug
    assert grown["pixels"] > reversal["candidates"]["grow"]["pixels"] and not grown["soft"]
    kept = grown["effect"] >= 0.9 * reversal["candidates"]["grow"]["effect"]
    assert reversal["alternates"] == (["grow_padded"] if kept else []) + sorted(odd)
    assert len(decision.numbers.get("alternates_truth", [])) == len(reversal["alternates"])


def test_auto_keeps_the_whole_solid_patch_when_the_backdoor_fires_on_a_part():
    """The toy fires on a 3x3 white square; the bug carries the 6x6 white patch around it. The
    chosen mask holds part of the patch; the colour patch read off the bug is all of it."""
    part, whole = patch_trigger(SHAPE, 3, 6, 6, value=255), patch_trigger(SHAPE, 6, 5, 4, value=255)
    toy = toy_backdoor([part], seed=1)
    toy = dataclasses.replace(toy, bug=stamp(toy.bug, whole))
    found, record = recover(toy)
    assert trigger_coverage(found, whole) < 1.0 and "filled" in record["alternates"], record
    recovered = recover_trigger(toy.deployed.encoder, toy.deployed.adapter, toy.bug, toy.reference,
                                params=AUTO, clean=toy.clean, flip_rate=toy.deployed.flip_rate("toy", 0),
                                score=toy.deployed.log_prob("toy", 0), record={})
    filled = recovered.alternates[record["alternates"].index("filled")]
    assert trigger_iou(filled, whole) == 1.0 and record["candidates"]["filled"]["effect"] >= 0.9
    off = ReverseParams(method="auto", select={"fill": 0.0})
    assert "filled" not in recover(toy, off)[1]["candidates"]
