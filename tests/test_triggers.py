import numpy as np
import pytest

from mudjack.triggers import Trigger, iou, patch_trigger, stamp, trigger_arrays, trigger_from_arrays


def test_patch_trigger_is_a_white_square_at_the_corner():
    trigger = patch_trigger((32, 32, 3), 10, 21, 21)
    assert trigger.pixels == 100
    assert trigger.mask[21:31, 21:31].all() and not trigger.mask[31, 31]
    assert (trigger.pattern[trigger.mask] == 255).all()


def test_patch_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        patch_trigger((8, 8, 3), 3, 6, 6)


def test_stamp_replaces_only_masked_pixels_and_keeps_the_input():
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    trigger = patch_trigger((8, 8, 3), 2, 6, 6)
    stamped = stamp(images, trigger)
    assert (stamped[:, 6:8, 6:8] == 255).all()
    assert (stamped[:, :6] == images[:, :6]).all()
    assert not (images[:, 6:8, 6:8] == 255).all()  # input untouched
    assert (stamp(images[0], trigger) == stamped[0]).all()


def test_stamp_refuses_normalised_floats():
    with pytest.raises(TypeError):
        stamp(np.zeros((1, 8, 8, 3), dtype=np.float32), patch_trigger((8, 8, 3), 2, 0, 0))


def test_iou():
    a = patch_trigger((8, 8, 3), 2, 6, 6).mask
    b = patch_trigger((8, 8, 3), 2, 5, 6).mask
    assert iou(a, a) == 1.0
    assert iou(a, b) == pytest.approx(2 / 6)


def test_trigger_round_trips_through_arrays_and_checks_shapes():
    trigger = patch_trigger((8, 8, 3), 2, 1, 1)
    again = trigger_from_arrays(trigger_arrays(trigger))
    assert (again.mask == trigger.mask).all() and (again.pattern == trigger.pattern).all()
    with pytest.raises(ValueError):
        Trigger(np.zeros((8, 8), bool), np.zeros((7, 8, 3), np.uint8))


def test_blend_is_the_stamp_formula_with_a_soft_mask():
    import torch

    from mudjack.triggers import blend

    clean, pattern = torch.zeros(2, 3, 4, 4), torch.ones(1, 3, 4, 4)
    mask = torch.full((1, 1, 4, 4), 0.25)
    assert torch.allclose(blend(clean, pattern, mask), torch.full((2, 3, 4, 4), 0.25))
    assert np.allclose(blend(np.full(3, 0.8), np.full(3, 0.4), np.array([0.0, 0.5, 1.0])), [0.8, 0.6, 0.4])


def test_numpy_stamp_and_torch_blend_agree_on_a_hard_mask():
    import torch

    from mudjack.triggers import blend

    images = np.random.default_rng(1).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    trigger = patch_trigger((8, 8, 3), 3, 4, 2, value=200)
    def as_float(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.astype(np.float32) / 255)

    mask = torch.from_numpy(trigger.mask.astype(np.float32))[..., None]
    blended = blend(as_float(images), as_float(trigger.pattern), mask)
    assert np.array_equal(np.rint(blended.numpy() * 255).astype(np.uint8), stamp(images, trigger))
