"""The reversal-method registry: `intake.reverse.method` names a registered method."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from mudjack.intake import IntakeParams
from mudjack.intake.masks import masked_trigger
from mudjack.intake.reverse import REVERSAL_METHODS, ReverseParams, register_reversal, reverse_engineer

IMAGE_ADAPTER = SimpleNamespace(modality="image", resize_raw=lambda raw: raw)  # inputs at its size


def test_the_built_in_methods_are_registered():
    builtin = {"occlusion", "grow", "scan", "inversion", "soft", "blend", "residual", "smooth", "auto"}
    assert builtin <= set(REVERSAL_METHODS)
    assert IntakeParams().reverse.method == "auto"
    assert IntakeParams().reverse.select.candidates == ["grow", "soft", "scan", "residual", "smooth", "blend"]


def test_an_unregistered_method_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError, match="unknown reversal method 'nope'.*grow"):
        ReverseParams(method="nope")


def test_reverse_engineer_dispatches_to_a_registered_method():
    seen = {}

    def corner(encoder, adapter, bug, reference, *, params, seed, clean, flip_rate, score, accept, record):
        seen.update(params=params, seed=seed, clean=clean, flip_rate=flip_rate, score=score, accept=accept)
        record["corner"] = True
        mask = np.zeros(bug.shape[:2], bool)
        mask[-2:, -2:] = True
        return masked_trigger(mask, bug)

    register_reversal("test_corner")(corner)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_reversal("test_corner")(corner)
        params = ReverseParams(method="test_corner")
        bug = np.full((6, 6, 3), 200, np.uint8)
        clean = np.zeros((2, 6, 6, 3), np.uint8)
        record = {}
        trigger = reverse_engineer(None, IMAGE_ADAPTER, bug, bug, params=params, seed=3, clean=clean,
                                   record=record)
    finally:
        del REVERSAL_METHODS["test_corner"]
    assert trigger.pixels == 4 and (trigger.pattern[trigger.mask] == 200).all()
    assert (trigger.pattern[~trigger.mask] == 0).all()
    # the method gets the params with the auto settings resolved for 6x6 inputs
    assert seen["params"].method == "test_corner" and seen["params"].window == 2
    assert seen["seed"] == 3 and seen["clean"] is clean
    assert seen["flip_rate"] is None and seen["score"] is None
    assert record["corner"] and record["settings"]["input_side"] == 6


@pytest.mark.parametrize("method", ["grow", "inversion", "soft", "auto"])
def test_grow_and_inversion_need_clean_inputs(method):
    bug = np.zeros((6, 6, 3), np.uint8)
    with pytest.raises(ValueError, match=f"by {method} needs clean inputs"):
        reverse_engineer(None, IMAGE_ADAPTER, bug, bug, params=ReverseParams(method=method),
                         clean=bug[:0])
