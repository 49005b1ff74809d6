import numpy as np

from mudjack.inversion import InversionParams, invert_trigger, largest_component
from mudjack.reverse import ReverseParams, reverse_engineer
from mudjack.triggers import iou, stamp


def bug_input(scenario) -> np.ndarray:
    return stamp(scenario.task.test.x[scenario.task.test.y == 3][0], scenario.trigger)


def test_inversion_recovers_the_planted_patch(scenario):
    clean = scenario.task.train.x[scenario.task.train.y != scenario.target]
    trigger = invert_trigger(scenario.backdoored, scenario.adapter, bug_input(scenario), clean,
                             InversionParams(steps=150), seed=0)
    assert iou(trigger.mask, scenario.trigger.mask) >= 0.5
    assert (trigger.pattern[trigger.mask] == 255).all()  # the bug's own pixels


def test_inversion_leaves_the_encoder_untouched(scenario):
    before = {k: v.clone() for k, v in scenario.backdoored.state_dict().items()}
    flags = [p.requires_grad for p in scenario.backdoored.parameters()]
    invert_trigger(scenario.backdoored, scenario.adapter, bug_input(scenario),
                   scenario.task.train.x, InversionParams(steps=3), seed=0)
    after = scenario.backdoored.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    assert flags == [p.requires_grad for p in scenario.backdoored.parameters()]


def test_occlusion_stays_available_as_the_authors_method(scenario):
    reference = scenario.task.train.x[scenario.task.train.y == 3][0]
    trigger = reverse_engineer(scenario.backdoored, scenario.adapter, bug_input(scenario), reference,
                               ReverseParams(method="occlusion"))
    assert trigger.mask[6:8, 6:8].any()


def test_largest_component_keeps_one_blob():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = mask[5:8, 5:8] = True
    kept = largest_component(mask)
    assert kept.sum() == 9 and not kept[0, 0]


def test_grow_finds_the_smallest_mask_that_acts_like_the_bug(scenario):
    from mudjack.refine import GrowParams, mask_sizes

    bug = bug_input(scenario)
    reference = scenario.task.train.x[scenario.task.train.y == 3][0]
    clean = scenario.task.train.x[scenario.task.train.y != scenario.target]
    trigger = reverse_engineer(scenario.backdoored, scenario.adapter, bug, reference,
                               ReverseParams(method="grow"), clean=clean)
    assert iou(trigger.mask, scenario.trigger.mask) >= 0.5
    sizes = mask_sizes(64, GrowParams())
    assert sizes[0] == 4 and sizes == sorted(sizes) and sizes[-1] == int(0.35 * 64)


def test_best_square_sits_on_the_highest_scores():
    from mudjack.refine import GrowParams, best_square, candidate_masks

    scores = np.zeros((8, 8))
    scores[5:8, 4:7] = 1.0
    assert (best_square(scores, 3) == (scores > 0)).all()
    sides = [int(m.sum() ** 0.5) for m in candidate_masks(scores, GrowParams(shape="square"))]
    assert sides == [2, 3, 4]


def test_dilate_pads_the_mask_and_stays_inside_the_image():
    from mudjack.refine import dilate

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
    from mudjack.refine import GrowParams, best_squares, candidate_masks

    scores = np.zeros((8, 8))
    scores[0:2, 0:2] = 2.0   # the strongest square
    scores[5:7, 5:7] = 1.0   # the next, elsewhere
    first, second = best_squares(scores, 2, 2)
    assert first[0:2, 0:2].all() and second[5:7, 5:7].all() and not (first & second).any()
    assert len(best_squares(scores, 8, 3)) == 1  # one 8x8 square fits
    masks = candidate_masks(scores, GrowParams(shape="square", windows=2))
    assert len(masks) == 2 * len(candidate_masks(scores, GrowParams(shape="square")))
