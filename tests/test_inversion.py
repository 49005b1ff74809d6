import numpy as np

from mudjack.intake.inversion import InversionParams, invert_trigger
from mudjack.intake.masks import largest_component
from mudjack.intake.reverse import ReverseParams, reverse_engineer
from mudjack.triggers import iou, stamp


def bug_input(scenario) -> np.ndarray:
    return stamp(scenario.task.test.x[scenario.task.test.y == 3][0], scenario.trigger)


def test_inversion_recovers_the_planted_patch(scenario):
    clean = scenario.task.train.x[scenario.task.train.y != scenario.target]
    trigger = invert_trigger(scenario.backdoored, scenario.adapter, bug_input(scenario), clean,
                             params=InversionParams(steps=150), seed=0)
    assert iou(trigger.mask, scenario.trigger.mask) >= 0.5
    assert (trigger.pattern[trigger.mask] == 255).all()  # the bug's own pixels


def test_inversion_leaves_the_encoder_untouched(scenario):
    before = {k: v.clone() for k, v in scenario.backdoored.state_dict().items()}
    flags = [p.requires_grad for p in scenario.backdoored.parameters()]
    invert_trigger(scenario.backdoored, scenario.adapter, bug_input(scenario),
                   scenario.task.train.x, params=InversionParams(steps=3), seed=0)
    after = scenario.backdoored.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    assert flags == [p.requires_grad for p in scenario.backdoored.parameters()]


def test_occlusion_stays_available_as_the_authors_method(scenario):
    reference = scenario.task.train.x[scenario.task.train.y == 3][0]
    trigger = reverse_engineer(scenario.backdoored, scenario.adapter, bug_input(scenario), reference,
                               params=ReverseParams(method="occlusion"))
    assert trigger.mask[6:8, 6:8].any()


def test_largest_component_keeps_one_blob():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = mask[5:8, 5:8] = True
    kept = largest_component(mask)
    assert kept.sum() == 9 and not kept[0, 0]


def test_grow_finds_the_smallest_mask_that_acts_like_the_bug(scenario):
    from mudjack.intake.grow import GrowParams, mask_sizes

    bug = bug_input(scenario)
    reference = scenario.task.train.x[scenario.task.train.y == 3][0]
    clean = scenario.task.train.x[scenario.task.train.y != scenario.target]
    trigger = reverse_engineer(scenario.backdoored, scenario.adapter, bug, reference,
                               params=ReverseParams(method="grow"), clean=clean)
    assert iou(trigger.mask, scenario.trigger.mask) >= 0.5
    sizes = mask_sizes(64, GrowParams())
    assert sizes[0] == 4 and sizes == sorted(sizes) and sizes[-1] == int(0.35 * 64)


def test_best_square_sits_on_the_highest_scores():
    from mudjack.intake.grow import GrowParams, candidate_masks
    from mudjack.intake.masks import best_square

    scores = np.zeros((8, 8))
    scores[5:8, 4:7] = 1.0
    assert (best_square(scores, 3) == (scores > 0)).all()
    sides = [int(m.sum() ** 0.5) for m in candidate_masks(scores, GrowParams(shape="square"))]
    assert sides == [2, 3, 4]


def test_dilate_pads_the_mask_and_stays_inside_the_image():
    from mudjack.intake.masks import dilate

    mask = np.zeros((8, 8), bool)
    mask[6:8, 3:5] = True
    grown = dilate(mask, 1)
    assert grown.shape == mask.shape and grown[mask].all()
    assert grown.sum() == 4 * 3 and grown[5:8, 2:6].all()
    assert dilate(mask, 0) is mask


def test_trigger_coverage_counts_true_pixels_inside_the_mask(scenario):
    from mudjack.triggers import Trigger, trigger_coverage

    half = scenario.trigger.mask.copy()
    half[np.nonzero(half)[0][0]] = False  # drop the first row of the planted patch
    found = Trigger(mask=half, pattern=scenario.trigger.pattern)
    assert trigger_coverage(found, scenario.trigger) == half.sum() / scenario.trigger.mask.sum() < 1


def test_best_squares_gives_the_next_best_that_do_not_overlap():
    from mudjack.intake.grow import GrowParams, candidate_masks
    from mudjack.intake.masks import best_squares

    scores = np.zeros((8, 8))
    scores[0:2, 0:2] = 2.0   # the strongest square
    scores[5:7, 5:7] = 1.0   # the next, elsewhere
    first, second = best_squares(scores, 2, 2)
    assert first[0:2, 0:2].all() and second[5:7, 5:7].all() and not (first & second).any()
    assert len(best_squares(scores, 8, 3)) == 1  # one 8x8 square fits
    masks = candidate_masks(scores, GrowParams(shape="square", windows=2))
    assert len(masks) == 2 * len(candidate_masks(scores, GrowParams(shape="square")))


def _fires_on_corner(pixels):
    """A toy classifier's flip rate: the share of inputs whose 3x3 block at (5, 5) is white."""
    return float((pixels[:, :, 5:8, 5:8] > 0.99).flatten(1).all(1).float().mean())


def test_scan_ranks_the_pixels_whose_squares_flip_the_classifier():
    import torch

    from mudjack.intake.grow import scan_map
    from mudjack.intake.masks import best_square, square_corners

    assert square_corners((8, 8), 3, 2) == [(r, c) for r in (0, 2, 4, 5) for c in (0, 2, 4, 5)]
    clean = torch.zeros(4, 3, 8, 8)
    bug = torch.zeros(1, 3, 8, 8)
    bug[:, :, 5:8, 5:8] = 1.0             # the "trigger" the toy classifier fires on
    bug[:, :, 0:2, 0:2] = 1.0             # bright content that does not fire
    scores = scan_map(_fires_on_corner, clean, bug, [3, 4], stride=1)
    assert scores.shape == (8, 8)
    assert scores[5:8, 5:8].min() > 0 and scores[0:2, 0:2].max() == 0
    assert scores[7, 7] == 2.0  # covered by one square of each side, and both fire
    assert best_square(scores, 3)[5:8, 5:8].all()


def test_grow_on_the_scan_finds_a_trigger_occlusion_missed():
    import torch

    from mudjack.intake.grow import GrowParams, grow_trigger

    class Flat(torch.nn.Module):  # features carry nothing: only the flip rate can tell
        def forward(self, x):
            return x.flatten(1)[:, :4]

    class Adapter:
        def preprocess(self, raw):
            return torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255

    bug = np.zeros((8, 8, 3), np.uint8)
    bug[5:8, 5:8] = 255
    misleading = np.zeros((8, 8))
    misleading[0:3, 0:3] = 1.0           # occlusion peaking away from the trigger
    clean = np.zeros((6, 8, 8, 3), np.uint8)
    params = GrowParams(shape="square", max_fraction=0.2, scan=[3], scan_stride=1, scan_samples=4)
    found = grow_trigger(Flat(), Adapter(), bug, misleading, clean, params=params,
                         flip_rate=_fires_on_corner)
    assert found.mask[5:8, 5:8].all() and found.mask.sum() == 9
    missed = grow_trigger(Flat(), Adapter(), bug, misleading, clean,
                          params=params.model_copy(update={"scan": []}), flip_rate=_fires_on_corner)
    assert not missed.mask[5:8, 5:8].all()
