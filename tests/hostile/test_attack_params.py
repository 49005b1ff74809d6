"""Hostile attack params the encoder or task shows to be unusable: a patch that does not fit,
a target that is not a class, a trigger that plants nothing or a key that would be silently
ignored. Each is a one-line ParamsError naming the key, before any training."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mudjack.config import ParamsError
from mudjack.encoders import get_adapter
from stages.attack import attack_targets, make_triggers
from stages.config import AttackParams, TriggerParams

IMAGE = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 4, "feature_dim": 8})
TEXT: Any = SimpleNamespace(modality="text")  # make_triggers reads only the modality of a text encoder


def refused(call, key: str) -> None:
    with pytest.raises(ParamsError) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"{key}:") and "\n" not in message, message


@pytest.mark.parametrize("patch", [{"size": 9}, {"size": 2, "row": 7, "col": 7}, {"size": 1, "col": 8}])
def test_a_patch_that_does_not_fit_the_images_is_refused(patch: dict[str, int]) -> None:
    refused(lambda: make_triggers(IMAGE, TriggerParams(**patch)), "attack.trigger")


def test_a_patch_filling_the_whole_image_still_fits() -> None:
    (trigger,) = make_triggers(IMAGE, TriggerParams(size=8))
    assert trigger.mask.all()


@pytest.mark.parametrize(("target", "targets", "key"), [
    (10, [], "attack.target"), (10**12, [], "attack.target"), (0, [99], "attack.trigger.targets"),
    (0, [10], "attack.trigger.targets")])
def test_a_target_that_is_not_a_class_of_the_task_is_refused(target: int, targets: list[int],
                                                              key: str) -> None:
    cfg = AttackParams(target=target, trigger=TriggerParams(family="dual", targets=targets))
    refused(lambda: attack_targets(cfg, 2, 10), key)
    assert attack_targets(AttackParams(target=9, trigger=TriggerParams(size=1)), 1, 10) == [9]


def test_a_size_0_patch_plants_nothing_and_is_refused() -> None:
    refused(lambda: make_triggers(IMAGE, TriggerParams()), "attack.trigger.size")
    refused(lambda: make_triggers(IMAGE, TriggerParams(size=0, row=2, col=2)), "attack.trigger.size")


def test_words_on_an_image_encoder_are_refused_not_ignored() -> None:
    refused(lambda: make_triggers(IMAGE, TriggerParams(words=["cf"])), "attack.trigger.words")
    refused(lambda: make_triggers(IMAGE, TriggerParams(words=["cf"], size=2)), "attack.trigger.words")


def test_a_text_encoder_needs_words_and_ignores_the_default_patch() -> None:
    refused(lambda: make_triggers(TEXT, TriggerParams()), "attack.trigger.words")
    # params.yaml's image patch stays under a text scenario's words (minilm-sst2): not an error
    assert make_triggers(TEXT, TriggerParams(words=["cf"], size=2, row=6, col=6))[0].words == ("cf",)
