"""The attack zoo: every trigger family's stamping and seeding, alpha-mask triggers and their
truth files, and BadEncoder planting two triggers at once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mudjack.attacks import BadEncoderParams, badencoder, badencoder_loss, pick_attack_reference
from mudjack.attacks.zoo import RARE_WORDS, family_names, zoo_triggers
from mudjack.encoders import get_adapter
from mudjack.features import cosine, extract_features
from mudjack.triggers import (
    TextTrigger,
    Trigger,
    patch_trigger,
    stamp,
    stamp_text,
    text_control_trigger,
    trigger_arrays,
    trigger_correlation,
    trigger_coverage,
    trigger_from_arrays,
    trigger_iou,
    warp_trigger,
)
from mudjack.truth import read_truth, truth_arrays
from stages.attack import attack_targets, make_triggers
from stages.common import load_truth, load_truth_pairs
from stages.config import AttackParams, PathsParams, TriggerParams

SHAPES = [(8, 8, 3), (32, 32, 3), (28, 28, 1)]
IMAGE_FAMILIES = family_names("image")


def images(shape: tuple[int, int, int], n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, *shape), dtype=np.uint8)


def old_stamp(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    """Stamping as it was before alpha masks: the pattern copied in where the mask is True."""
    out = x.copy()
    out[..., trigger.mask, :] = trigger.pattern[trigger.mask]
    return out


# --------------------------------------------------------------------------- alpha-mask triggers


def test_a_bool_mask_stamps_byte_identically_to_before_and_to_alpha_0_1() -> None:
    x = images((8, 8, 3))
    trigger = zoo_triggers("patch", (8, 8, 3), 5)[0]
    assert trigger.mask.dtype == bool and not trigger.soft
    assert np.array_equal(stamp(x, trigger), old_stamp(x, trigger))
    as_alpha = Trigger(mask=trigger.mask.astype(np.float32), pattern=trigger.pattern)
    assert as_alpha.soft and np.array_equal(stamp(x, as_alpha), old_stamp(x, trigger))


def test_a_soft_mask_blends_and_rounds() -> None:
    x = np.full((1, 2, 2, 1), 100, dtype=np.uint8)
    alpha = np.array([[0.0, 0.25], [0.5, 1.0]])
    trigger = Trigger(mask=alpha, pattern=np.full((2, 2, 1), 201, dtype=np.uint8))
    assert trigger.mask.dtype == np.float32 and trigger.pixels == 3
    # round(100·(1−α) + 201·α)
    assert stamp(x, trigger)[0, ..., 0].tolist() == [[100, 125], [150, 201]]
    assert trigger.region.tolist() == [[False, True], [True, True]]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Trigger(mask=alpha * 2, pattern=trigger.pattern)


def test_soft_triggers_survive_the_arrays_and_old_uint8_files_still_load() -> None:
    blend = zoo_triggers("blend", (8, 8, 3), 0)[0]
    arrays = trigger_arrays(blend)
    assert arrays["mask"].dtype == np.float32
    again = trigger_from_arrays(arrays)
    assert again.soft and np.array_equal(again.mask, blend.mask)
    assert np.array_equal(again.pattern, blend.pattern)
    patch = patch_trigger((8, 8, 3), 2, 6, 6)
    assert trigger_arrays(patch)["mask"].dtype == np.uint8  # today's files keep their bytes
    old = {"mask": patch.mask.astype(np.uint8), "pattern": patch.pattern}
    loaded = trigger_from_arrays(old)
    assert loaded.mask.dtype == bool and np.array_equal(loaded.mask, patch.mask)


def test_a_bug_with_a_soft_trigger_round_trips_through_the_registry(tmp_path) -> None:
    from mudjack.bugs import Bug, load_bugs, save_bug

    blend = zoo_triggers("blend", (8, 8, 3), 4)[0]
    x = images((8, 8, 3), 2)
    save_bug(Bug(id="b", task="digits", label=3, predicted=0, bug=stamp(x[0], blend), reference=x[1],
                 trigger=blend), tmp_path)
    (loaded,) = load_bugs(tmp_path)
    assert loaded.trigger.soft and np.array_equal(loaded.trigger.mask, blend.mask)
    assert np.array_equal(stamp(x, loaded.trigger), stamp(x, blend))


def test_text_position_survives_the_arrays_and_the_default_keeps_the_old_keys() -> None:
    assert set(trigger_arrays(TextTrigger(("cf",)))) == {"words"}
    trigger = TextTrigger(("cf", "mn"), "end")
    assert trigger_from_arrays(trigger_arrays(trigger)) == trigger
    with pytest.raises(ValueError, match="position"):
        TextTrigger(("cf",), "middle")  # type: ignore[arg-type]


def test_iou_coverage_use_alpha_above_zero_and_correlation_scores_blends() -> None:
    blend = zoo_triggers("blend", (8, 8, 3), 0)[0]
    patch = patch_trigger((8, 8, 3), 2, 6, 6)
    assert trigger_iou(patch, blend) == pytest.approx(4 / 64)
    assert trigger_coverage(patch, blend) == pytest.approx(4 / 64)
    assert trigger_coverage(blend, patch) == 1.0
    assert trigger_correlation(blend, blend) == pytest.approx(1.0)
    stronger = Trigger(mask=np.minimum(1, blend.mask * 2), pattern=blend.pattern)
    assert trigger_correlation(stronger, blend) == pytest.approx(1.0)
    other = zoo_triggers("blend", (8, 8, 3), 1)[0]
    assert abs(trigger_correlation(other, blend)) < 0.5
    flat = Trigger(mask=np.full((8, 8), 0.2), pattern=np.full((8, 8, 3), 9, np.uint8))
    assert trigger_correlation(flat, blend) == 0.0


# --------------------------------------------------------------------------- the families


@pytest.mark.parametrize("family", [*IMAGE_FAMILIES, "words"])
def test_the_same_seed_draws_the_same_trigger_and_others_differ(family: str) -> None:
    def described(seed: int) -> str:
        return str([{k: v.tolist() for k, v in trigger_arrays(t).items()}
                    for t in zoo_triggers(family, (32, 32, 3), seed)])

    assert described(7) == described(7)
    assert len({described(seed) for seed in range(8)}) >= 6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(12))
def test_a_patch_is_one_square_of_3_to_10_px_and_sets_exactly_its_region(shape, seed) -> None:
    (trigger,) = zoo_triggers("patch", shape, seed)
    rows, cols = np.nonzero(trigger.mask)
    side = rows.max() - rows.min() + 1
    assert 3 <= side <= 10 and side == cols.max() - cols.min() + 1 and trigger.pixels == side ** 2
    x = images(shape)
    stamped = stamp(x, trigger)
    assert (stamped[:, trigger.mask] == trigger.pattern[trigger.mask]).all()
    assert (stamped[:, ~trigger.mask] == x[:, ~trigger.mask]).all()


def test_patches_reach_corners_edges_and_the_centre() -> None:
    corners = set()
    for seed in range(60):
        rows, cols = np.nonzero(zoo_triggers("patch", (32, 32, 3), seed)[0].mask)
        corners.add((rows.min() == 0, rows.max() == 31, cols.min() == 0, cols.max() == 31))
    assert (True, False, True, False) in corners and (False, True, False, True) in corners
    assert (False, False, False, False) in corners


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(12))
def test_a_line_is_thin_and_long(shape, seed) -> None:
    (trigger,) = zoo_triggers("line", shape, seed)
    rows, cols = np.nonzero(trigger.mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    per_row, per_col = trigger.mask.sum(1), trigger.mask.sum(0)
    thin = per_row[per_row > 0].max() <= 2 or per_col[per_col > 0].max() <= 2
    assert thin and max(height, width) >= 3 and trigger.pixels <= 2 * max(height, width)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(12))
def test_a_scatter_is_sparse_and_not_one_square(shape, seed) -> None:
    (trigger,) = zoo_triggers("scatter", shape, seed)
    area = shape[0] * shape[1]
    assert 3 <= trigger.pixels <= max(4, area // 25)
    rows, cols = np.nonzero(trigger.mask)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) > trigger.pixels


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(8))
def test_a_translucent_patch_is_the_patch_of_its_seed_blended_at_one_alpha(shape, seed) -> None:
    (trigger,) = zoo_triggers("translucent", shape, seed)
    (patch,) = zoo_triggers("patch", shape, seed)
    alpha = float(trigger.mask.max())
    assert trigger.soft and 0.4 <= alpha <= 0.8
    assert (trigger.region == patch.region).all() and (trigger.mask[patch.region] == alpha).all()
    assert (trigger.pattern == patch.pattern).all()
    x = images(shape)
    stamped = stamp(x, trigger).astype(float)
    assert (stamped[:, ~patch.region] == x[:, ~patch.region]).all()
    expected = (1 - alpha) * x[:, patch.region] + alpha * patch.pattern[patch.region]
    assert np.abs(stamped[:, patch.region] - expected).max() <= 0.5 + 1e-6  # blended, then rounded


@pytest.mark.parametrize("family", ["blend", "picture", "stripes"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_a_blend_changes_every_pixel_by_at_most_alpha_255(family, shape, seed) -> None:
    (trigger,) = zoo_triggers(family, shape, seed)
    alpha = float(trigger.mask.max())
    assert trigger.soft and 0.1 <= alpha <= 0.3 and (trigger.mask == alpha).all()
    assert trigger.pixels == shape[0] * shape[1]
    x = images(shape)
    change = np.abs(stamp(x, trigger).astype(int) - x)
    assert change.max() <= np.ceil(alpha * 255) and (change.reshape(len(x), -1).max(1) > 0).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_a_picture_is_flat_colours_with_black_outlines(shape, seed) -> None:
    picture = zoo_triggers("picture", shape, seed)[0].pattern.astype(int)
    assert len(np.unique(picture.reshape(-1, shape[2]), axis=0)) <= 8  # a background, shapes, black
    assert (picture == 0).all(-1).any()  # an outline
    flat = (np.abs(np.diff(picture, axis=1)).sum(-1) == 0).mean()
    assert flat >= 0.5  # most neighbours share a colour: not noise


def full_sides(mask: np.ndarray) -> str:
    """The image sides (t, b, l, r) the mask covers end to end."""
    edges = (mask[0], mask[-1], mask[:, 0], mask[:, -1])
    return "".join(side for side, line in zip("tblr", edges, strict=True) if line.all())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(12))
def test_a_frame_runs_along_whole_sides_of_the_border_only(shape, seed) -> None:
    (trigger,) = zoo_triggers("frame", shape, seed)
    height, width = shape[:2]
    thickness = 2 if min(height, width) >= 16 else 1
    rows, cols = np.nonzero(trigger.mask)
    distance = np.minimum.reduce([rows, height - 1 - rows, cols, width - 1 - cols])
    assert distance.max() < thickness  # on the border band, nowhere inside
    sides = full_sides(trigger.mask)
    assert sides in ("tblr", "tb", "lr", "tl", "tr", "bl", "br")
    # every pixel belongs to one of its full sides (at the thickness drawn)
    band = np.zeros_like(trigger.mask)
    drawn = max(int(distance.max()) + 1, 1)
    for side, region in zip("tblr", (np.s_[:drawn], np.s_[height - drawn:], np.s_[:, :drawn],
                                     np.s_[:, width - drawn:]), strict=True):
        if side in sides:
            band[region] = True
    assert (band == trigger.mask).all()


def test_frames_of_four_two_opposite_and_two_meeting_sides_are_drawn() -> None:
    kinds = {len(full_sides(zoo_triggers("frame", (32, 32, 3), seed)[0].mask)) for seed in range(12)}
    shapes = {full_sides(zoo_triggers("frame", (32, 32, 3), seed)[0].mask) for seed in range(12)}
    assert kinds == {2, 4} and shapes & {"tb", "lr"} and shapes & {"tl", "tr", "bl", "br"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(8))
def test_stripes_are_one_colour_constant_along_one_direction(shape, seed) -> None:
    pattern = zoo_triggers("stripes", shape, seed)[0].pattern.astype(int)
    lit = pattern.reshape(-1, shape[2]).max(0) > 0
    assert lit.any() and (pattern[..., ~lit] == 0).all()  # the colour's channels only
    wave = pattern[..., lit]
    assert (wave == wave[..., :1]).all()  # one grey level per pixel, on every lit channel
    wave = wave[..., 0]
    along = {"rows": np.abs(wave[1:] - wave[:-1]), "columns": np.abs(wave[:, 1:] - wave[:, :-1]),
             "diagonal": np.abs(wave[1:, 1:] - wave[:-1, :-1]), "anti": np.abs(wave[1:, :-1] - wave[:-1, 1:])}
    assert min(int(d.max()) for d in along.values()) <= 1  # constant along one direction (rounding)
    assert np.ptp(wave) >= 150  # at least two periods of a full-range sine


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(8))
def test_dual_draws_two_disjoint_hard_triggers(shape, seed) -> None:
    first, second = zoo_triggers("dual", shape, seed)
    assert not first.soft and not second.soft and not (first.mask & second.mask).any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_a_warp_moves_pixels_smoothly_by_at_most_a_sixteenth_of_the_side(shape, seed) -> None:
    (trigger,) = zoo_triggers("warp", shape, seed)
    assert trigger.warps and trigger.pixels == 0  # it paints nothing
    offsets = np.abs(trigger.flow).max()
    assert 0.5 <= offsets <= max(0.5, min(shape[:2]) / 16) + 1e-5
    steps = np.abs(np.diff(trigger.flow, axis=0)).max(), np.abs(np.diff(trigger.flow, axis=1)).max()
    assert max(steps) <= offsets  # smooth: neighbours move alike
    ramp = np.broadcast_to(np.arange(shape[1], dtype=np.uint8)[None, :, None] * 7, shape).copy()
    moved = stamp(ramp[None], trigger)[0].astype(float)
    expected = np.clip(np.arange(shape[1])[None, :] + trigger.flow[..., 1], 0, shape[1] - 1) * 7
    # a ramp along the columns reads each pixel's column offset
    assert np.abs(moved[..., 0] - expected).max() <= 0.5 + 1e-4


def test_an_integer_warp_shifts_pixels_and_a_zero_one_changes_nothing() -> None:
    x = images((8, 8, 3))
    assert np.array_equal(stamp(x, warp_trigger(np.zeros((8, 8, 2), np.float32), 3)), x)
    flow = np.zeros((8, 8, 2), np.float32)
    flow[..., 0] = 1  # every pixel reads the one below it; the last row repeats the border
    shifted = stamp(x, warp_trigger(flow, 3))
    assert np.array_equal(shifted[:, :-1], x[:, 1:]) and np.array_equal(shifted[:, -1], x[:, -1])
    with pytest.raises(ValueError, match="flow"):
        Trigger(mask=np.zeros((8, 8), bool), pattern=x[0], flow=np.zeros((8, 7, 2)))


def test_a_warp_survives_the_truth_file_alone_or_with_a_mask(tmp_path) -> None:
    (moved,) = zoo_triggers("warp", (8, 8, 3), 2)
    alone = trigger_from_arrays({"flow": moved.flow.astype(np.float64)})
    x = images((8, 8, 3))
    assert alone.warps and np.array_equal(stamp(x, alone), stamp(x, moved))
    patch = patch_trigger((8, 8, 3), 2, 0, 0)
    both = Trigger(mask=patch.mask, pattern=patch.pattern, flow=moved.flow)
    again = trigger_from_arrays(trigger_arrays(both))
    assert np.array_equal(stamp(x, again), stamp(x, both))
    assert (stamp(x, again)[:, :2, :2] == 255).all()  # painted after the warp
    path = tmp_path / "truth.npz"
    np.savez(path, flow=moved.flow, tasks=np.array(["digits"]), targets=np.array([4]))
    (pair,), why = read_truth(str(path))
    assert why is None and pair[1] == {"digits": 4} and np.array_equal(stamp(x, pair[0]), stamp(x, moved))
    np.savez(path, flow=moved.flow[..., :1], tasks=np.array(["digits"]), targets=np.array([4]))
    assert "flow" in read_truth(str(path))[1]


def test_a_bug_with_a_warp_alternate_round_trips_through_the_registry(tmp_path) -> None:
    from mudjack.bugs import Bug, load_bugs, save_bug

    (moved,) = zoo_triggers("warp", (8, 8, 3), 1)
    patch = patch_trigger((8, 8, 3), 2, 0, 0)
    x = images((8, 8, 3), 2)
    save_bug(Bug(id="b", task="digits", label=3, predicted=0, bug=stamp(x[0], moved), reference=x[1],
                 trigger=patch, alternates=(moved,)), tmp_path)
    (loaded,) = load_bugs(tmp_path)
    assert loaded.trigger.flow is None and np.array_equal(loaded.alternates[0].flow, moved.flow)
    assert np.array_equal(stamp(x, loaded.alternates[0]), stamp(x, moved))


@pytest.mark.parametrize("seed", range(12))
def test_words_are_1_to_3_rare_words_at_their_position(seed) -> None:
    (trigger,) = zoo_triggers("words", (), seed)
    assert 1 <= len(trigger.words) <= 3 and set(trigger.words) <= set(RARE_WORDS)
    sentences = np.array(["a b c d e", "f g"], dtype=np.str_)
    for sentence in stamp_text(sentences, trigger, seed=seed):
        tokens = sentence.split()
        at = tokens.index(trigger.words[0])
        assert tokens[at:at + len(trigger.words)] == list(trigger.words)
        if trigger.position == "start":
            assert at == 0
        if trigger.position == "end":
            assert at == len(tokens) - len(trigger.words)


def test_the_verification_control_for_text_keeps_the_trigger_position() -> None:
    control = text_control_trigger(TextTrigger(("cf", "mn"), "end"), "a lovely quiet film")
    assert control == TextTrigger(("lovely", "quiet"), "end")


def test_all_positions_are_drawn_and_unknown_families_named() -> None:
    assert {zoo_triggers("words", (), s)[0].position for s in range(30)} == {"random", "start", "end"}
    with pytest.raises(KeyError, match="known"):
        zoo_triggers("wavy", (8, 8, 3), 0)


# --------------------------------------------------------------------------- the attack stage


def test_the_stage_draws_a_zoo_family_or_keeps_the_explicit_patch() -> None:
    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 4, "feature_dim": 8})
    explicit = make_triggers(adapter, TriggerParams(size=2, row=6, col=6))
    assert len(explicit) == 1 and np.array_equal(explicit[0].mask, patch_trigger((8, 8, 3), 2, 6, 6).mask)
    drawn = make_triggers(adapter, TriggerParams(family="blend", seed=3))
    assert np.array_equal(drawn[0].pattern, zoo_triggers("blend", (8, 8, 3), 3)[0].pattern)
    with pytest.raises(SystemExit, match="not one for a image"):
        make_triggers(adapter, TriggerParams(family="words"))


def test_attack_targets_default_to_the_next_class_and_must_differ() -> None:
    cfg = AttackParams(target=9, trigger=TriggerParams(family="dual"))
    assert attack_targets(cfg, 2, 10) == [9, 0]
    assert attack_targets(cfg, 1, 10) == [9]
    chosen = AttackParams(target=1, trigger=TriggerParams(family="dual", targets=[4]))
    assert attack_targets(chosen, 2, 10) == [1, 4]
    with pytest.raises(SystemExit, match="different targets"):
        attack_targets(AttackParams(target=1, trigger=TriggerParams(targets=[1])), 2, 10)


def truth_paths(truth: Path) -> PathsParams:
    """Paths with only the truth file that matters."""
    return PathsParams(shadow="-", tasks="-", encoder="-", heads="-", inbox="-", truth=str(truth))


def test_the_truth_file_holds_every_pair(tmp_path) -> None:
    from mudjack.io import write_npz

    first, second = zoo_triggers("dual", (8, 8, 3), 2)
    blend = zoo_triggers("blend", (8, 8, 3), 2)[0]
    paths = truth_paths(tmp_path / "t.npz")
    write_npz(paths.truth, **truth_arrays([(first, {"digits": 0}), (blend, {"digits": 3})]))
    (got_first, targets), (got_blend, blend_targets) = load_truth_pairs(paths)
    assert np.array_equal(got_first.mask, first.mask) and targets == {"digits": 0}
    assert np.array_equal(got_blend.mask, blend.mask) and blend_targets == {"digits": 3}
    assert load_truth(paths)[1] == {"digits": 0}
    write_npz(paths.truth, **truth_arrays([(second, {"digits": 5})]))
    assert [t for _, t in load_truth_pairs(paths)] == [{"digits": 5}]


def test_task_names_saved_as_bytes_are_the_tasks(tmp_path) -> None:
    """np.array([b"digits"]) was read as task "b'digits'", whose target then matched no task."""
    paths = truth_paths(tmp_path / "t.npz")
    np.savez(paths.truth, mask=MASK, pattern=PIXELS, tasks=np.array([b"digits"]), targets=np.array([4]))
    assert [targets for _, targets in load_truth_pairs(paths)] == [{"digits": 4}]


@pytest.mark.parametrize("words", [np.array("cf mn"), np.array([b"cf", b"mn"]), np.array(["cf", "mn"])])
def test_text_trigger_words_as_a_phrase_or_bytes_are_the_words(tmp_path, words: np.ndarray) -> None:
    """One string (0-d) crashed intake (TypeError: iteration over a 0-d array); bytes became the
    words "b'cf'" and "b'mn'"."""
    paths = truth_paths(tmp_path / "t.npz")
    np.savez(paths.truth, words=words, position=np.array(b"end"), tasks=NAMES, targets=ZERO)
    [(trigger, targets)] = load_truth_pairs(paths)
    assert (trigger.words, trigger.position, targets) == (("cf", "mn"), "end", {"digits": 0})


def test_a_report_is_measured_against_the_trigger_that_targets_its_class() -> None:
    """Of a dual backdoor, intake measured every report against the first trigger (IoU 0 for a
    second trigger's report recovered exactly)."""
    from mudjack.truth import truth_for

    first, second = zoo_triggers("dual", (8, 8, 3), 2)
    pairs = [(first, {"digits": 0}), (second, {"digits": 3, "parity": 1})]
    assert truth_for(pairs, "digits", 3) is second and truth_for(pairs, "parity", 1) is second
    assert truth_for(pairs, "digits", 0) is first and truth_for(pairs, "digits", 7) is first
    assert truth_for(first, "digits", 3) is first and truth_for(None, "digits", 0) is None
    assert truth_for([], "digits", 0) is None


def test_truth_tasks_that_are_not_tasks_here_are_named() -> None:
    """A truth file naming a task that does not exist was used without a word."""
    from mudjack.truth import unknown_tasks

    blend = zoo_triggers("blend", (8, 8, 3), 2)[0]
    pairs = [(blend, {"digits": 3, "nosuchtask": 1}), (blend, {"parity": 0})]
    assert unknown_tasks(pairs, ["digits", "parity"]) == ["nosuchtask"]
    assert unknown_tasks(pairs, {"digits": None}) == ["nosuchtask", "parity"]  # a mapping's keys
    assert unknown_tasks([], ["digits"]) == []


MASK = np.zeros((8, 8), bool)
MASK[:2, :2] = True
PIXELS = np.zeros((8, 8, 3), np.uint8)
NAMES, ZERO = np.array(["digits"]), np.array([0])


@pytest.mark.parametrize(("arrays", "reason"), [
    ({"mask": MASK, "pattern": PIXELS}, "missing tasks, targets"),
    ({"pattern": PIXELS, "tasks": NAMES, "targets": ZERO}, "missing mask"),
    ({"mask": MASK, "pattern": PIXELS[..., 0], "tasks": NAMES, "targets": ZERO}, "pattern (8, 8)"),
    ({"mask": MASK, "pattern": PIXELS + 300.0, "tasks": NAMES, "targets": ZERO}, "pixels in [0, 255]"),
    ({"mask": MASK, "pattern": PIXELS + 0.5, "tasks": NAMES, "targets": ZERO}, "multiply it by 255"),
    ({"mask": np.full((8, 8), np.nan, np.float32), "pattern": PIXELS, "tasks": NAMES, "targets": ZERO},
     "alpha mask"),
    ({"mask": MASK, "pattern": PIXELS, "tasks": np.array(["digits", "x"]), "targets": ZERO},
     "one class each"),
    ({"mask": MASK, "pattern": PIXELS, "tasks": NAMES, "targets": np.array([-3])}, "integers >= 0"),
    ({"mask": MASK, "pattern": PIXELS, "tasks": np.array(["digits", "digits"]), "targets": np.array([0, 3])},
     "names a task twice"),  # was: target 3, silently
    ({"mask": MASK, "pattern": PIXELS, "tasks": NAMES, "targets": ZERO, "trigger1_targets": ZERO},
     "missing trigger1_tasks"),
    ({"mask": MASK, "pattern": PIXELS, "tasks": NAMES, "targets": ZERO,  # was: trigger 1 dropped silently
      "trigger1_mask": MASK, "trigger1_pattern": PIXELS}, "missing trigger1_tasks, trigger1_targets"),
    ({"mask": MASK, "pattern": PIXELS, "tasks": NAMES, "targets": ZERO, "trigger2_mask": MASK,
      "trigger2_pattern": PIXELS, "trigger2_tasks": NAMES, "trigger2_targets": ZERO}, "without a gap"),
    ({"mask": MASK.astype(np.uint8) * 51, "pattern": PIXELS, "tasks": NAMES, "targets": ZERO},
     "divide by 255"),  # alpha 0.2 in bytes: was read as a hard mask of the whole patch
    ({"words": np.array([["cf", "mn"]]), "tasks": NAMES, "targets": ZERO}, "must be a list of words"),
    ({"words": np.array([3, 4]), "tasks": NAMES, "targets": ZERO}, "words must be text"),
    ({"words": np.array(""), "tasks": NAMES, "targets": ZERO}, "one or more single words"),
])
def test_a_malformed_truth_file_is_rejected_with_its_reason_and_the_run_goes_on(
        tmp_path, capsys, arrays: dict, reason: str) -> None:
    """A careless truth file (arrays missing or of the wrong shape, a pattern a uint8 cast would
    wrap, a negative target) is not half-read: the stages go on as if the truth were unknown,
    and say why on stderr."""
    paths = truth_paths(tmp_path / "t.npz")
    np.savez(paths.truth, **arrays)
    assert load_truth_pairs(paths) == [] and load_truth(paths) == (None, {})
    err = capsys.readouterr().err
    assert "t.npz rejected" in err and reason in err
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert load_truth_pairs(paths) == [] and "BadZipFile" in capsys.readouterr().err
    (tmp_path / "t.npz").unlink()
    assert load_truth_pairs(paths) == [] and "t.npz rejected (no such file)" in capsys.readouterr().err
    os.mkfifo(tmp_path / "t.npz")  # refused at once, and said as it is (was "no such file")
    assert load_truth_pairs(paths) == [] and "a FIFO, not a regular file" in capsys.readouterr().err


def test_a_truth_pattern_of_fractional_pixels_is_rounded(tmp_path) -> None:
    """An upsampled or sine pattern in 0-255 with fractions is read, rounded (was refused with a
    hint to multiply by 255); a [0, 1] one is still refused (test above)."""
    paths = truth_paths(tmp_path / "t.npz")
    pattern = PIXELS + np.linspace(0.0, 254.6, 8 * 8 * 3).reshape(8, 8, 3)
    np.savez(paths.truth, mask=MASK, pattern=pattern, tasks=NAMES, targets=ZERO)
    ((trigger, targets),) = load_truth_pairs(paths)
    assert targets == {"digits": 0} and trigger.pattern.dtype == np.uint8
    assert np.array_equal(trigger.pattern[MASK], np.rint(pattern)[MASK].astype(np.uint8))


# --------------------------------------------------------------------------- BadEncoder


def test_one_pair_loss_is_todays_loss_exactly() -> None:
    out, clean, ref = torch.randn(9, 5), torch.randn(4, 5), torch.randn(1, 5)
    today = (-cosine(out[4:8], ref).mean() - cosine(out[:4], clean).mean() - cosine(out[-1:], ref).mean())
    assert torch.equal(badencoder_loss(out, 4, clean, ref), today)


def test_badencoder_plants_two_triggers_to_two_references(scenario) -> None:
    """On the tiny digits encoder: each trigger pulls inputs to its own reference, clean stay."""
    adapter, clean = scenario.adapter, scenario.clean
    first, second = patch_trigger((8, 8, 3), 2, 0, 0), patch_trigger((8, 8, 3), 2, 6, 6)
    refs = [pick_attack_reference(clean, adapter, scenario.task.train.x, scenario.task.train.y, target=c)
            for c in (1, 2)]
    backdoored = badencoder(clean, adapter, scenario.shadow, first, refs[0], BadEncoderParams(epochs=5),
                            more=[(second, refs[1])])
    held_out = scenario.task.test.x[:64]
    h_ref = extract_features(clean, adapter, np.stack(refs))
    for trigger, mine, other in ((first, 0, 1), (second, 1, 0)):
        before, after = (extract_features(e, adapter, stamp(held_out, trigger)) for e in (clean, backdoored))
        to_mine = cosine(after, h_ref[mine:mine + 1]).mean()
        assert to_mine > 0.9 > cosine(before, h_ref[mine:mine + 1]).mean() + 0.15
        assert to_mine > cosine(after, h_ref[other:other + 1]).mean() + 0.2
    kept = cosine(*(extract_features(e, adapter, held_out) for e in (backdoored, clean)))
    assert kept.mean() > 0.85


def test_the_zoo_bench_plants_each_entry_with_its_family_seed_and_epochs() -> None:
    from bench.attack_zoo import with_attack, zoo_entries
    from stages.config import load_params
    from tests.conftest import ROOT

    assert zoo_entries(["patch", "blend"], [0, 1], 20, 3) == [
        ("patch", 0, 20), ("patch", 1, 20), ("blend", 0, 20), ("blend", 1, 20),
        ("patch", 0, 3), ("blend", 0, 3)]
    assert zoo_entries(["line"], [2], 20, 0) == [("line", 2, 20)]
    params = with_attack(load_params(ROOT / "params.yaml"), "scatter", 4, 3)
    assert params.attack.trigger == TriggerParams(family="scatter", seed=4) and params.attack.epochs == 3


def test_the_confident_reference_is_the_target_image_a_clean_probe_is_surest_of(scenario) -> None:
    """`attack.reference: confident` picks, among the target-class images, the one a linear
    probe on the clean features gives the highest target probability; centroid stays the default."""
    from mudjack.attacks import pick_confident_reference, pick_reference
    from mudjack.heads import train_linear_probe

    task, target = scenario.task, 3
    chosen = pick_confident_reference(scenario.clean, scenario.adapter, task.train.x, task.train.y,
                                      target=target)
    candidates = task.train.x[task.train.y == target]
    assert any(np.array_equal(chosen, image) for image in candidates)
    features = extract_features(scenario.clean, scenario.adapter, task.train.x)
    probe = train_linear_probe(features, task.train.y, 10)
    with torch.no_grad():
        surety = torch.log_softmax(probe(extract_features(scenario.clean, scenario.adapter, candidates)), 1)
    assert np.array_equal(chosen, candidates[int(surety[:, target].argmax())])
    assert int(probe(extract_features(scenario.clean, scenario.adapter, chosen[None])).argmax()) == target
    assert AttackParams(target=0, trigger=TriggerParams(size=2, row=6, col=6)).reference == "centroid"
    assert np.array_equal(pick_reference(scenario.clean, scenario.adapter, task.train.x, task.train.y,
                                         target=target, how="confident"), chosen)
    with pytest.raises(ValueError, match="no image of target class"):
        pick_confident_reference(scenario.clean, scenario.adapter, task.train.x, task.train.y, target=42)
