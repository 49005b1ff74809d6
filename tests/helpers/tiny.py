"""Tiny instances of every registered encoder adapter and tiny inputs of every patch method,
for the contract tests (tests/test_contracts.py).

A new adapter needs one entry in TINY_ADAPTERS; a new patch method one in TINY_PATCH_PARAMS
(and its modality in PATCH_MODALITY). The contract tests fail for a registered one without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mudjack.bugs import Bug
from mudjack.data import LabelledSet
from mudjack.encoders import EncoderAdapter, get_adapter
from mudjack.patching import PatchInputs
from mudjack.triggers import TextTrigger, Trigger, patch_trigger
from tests.helpers.text import synthetic_sentences


@dataclass
class TinyAdapter:
    """An adapter on a tiny config, a few raw inputs in its input space, a trigger for them."""

    adapter: EncoderAdapter
    raw: np.ndarray
    trigger: Trigger | TextTrigger


def images(adapter: EncoderAdapter, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *adapter.input_shape), dtype=np.uint8)


def tiny_image(name: str, config: dict[str, Any], size: int) -> TinyAdapter:
    adapter = get_adapter(name, config)
    return TinyAdapter(adapter, images(adapter, 6), patch_trigger(adapter.input_shape, size, 1, 1))


def tiny_text(name: str, request: pytest.FixtureRequest) -> TinyAdapter:
    folder: Path = request.getfixturevalue("tiny_bert")
    adapter = get_adapter(name, {"folder": str(folder), "max_length": 32})
    return TinyAdapter(adapter, synthetic_sentences(6, 0).x, TextTrigger(("cf",)))


# A 2-layer ViT (hidden 32, 32x32 inputs, patch 8) with random weights, from a stored config (no folder).
HF_VISION = {"model": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "intermediate_size": 37, "image_size": 32, "patch_size": 8},
             "input_shape": [32, 32, 3], "mean": [0.5] * 3, "std": [0.5] * 3, "pooling": "cls"}
SMALL_CNN = {"input_shape": [8, 8, 3], "width": 4, "feature_dim": 8, "mean": [0.5] * 3, "std": [0.25] * 3}

# adapter name -> factory(request) of its tiny instance; `request` gives fixtures (tiny_bert)
TINY_ADAPTERS: dict[str, Callable[[pytest.FixtureRequest], TinyAdapter]] = {
    "small_cnn": lambda request: tiny_image("small_cnn", SMALL_CNN, 2),
    "resnet_cifar": lambda request: tiny_image("resnet_cifar", {"depth": 20}, 4),
    "hf_text": lambda request: tiny_text("hf_text", request),
    "minilm": lambda request: tiny_text("minilm", request),
    "hf_vision": lambda request: tiny_image("hf_vision", HF_VISION, 4),
}


def tiny_adapter(name: str, request: pytest.FixtureRequest) -> TinyAdapter:
    """The tiny instance of a registered adapter; fails (not skips) when it has no factory."""
    if name not in TINY_ADAPTERS:
        pytest.fail(f"encoder adapter {name!r} is registered but has no tiny-instance factory: "
                    f"add one to TINY_ADAPTERS in tests/helpers/tiny.py", pytrace=False)
    return TINY_ADAPTERS[name](request)


# patch method -> the modality of the encoder it patches, and its params for one tiny step
PATCH_MODALITY = {"mudjacking": "image", "mudjacking_text": "text", "finetune": "image",
                  "super_finetune": "image"}
TINY_PATCH_PARAMS: dict[str, dict[str, Any]] = {
    "mudjacking": {"device": "cpu", "epochs": 1, "batch_size": 6, "views": 2, "lr": 0.1},
    "mudjacking_text": {"device": "cpu", "epochs": 1, "batch_size": 6, "views": 2, "lr": 1e-2},
    "finetune": {"device": "cpu", "epochs": 1, "batch_size": 6, "hidden": [8]},
    "super_finetune": {"device": "cpu", "epochs": 1, "batch_size": 6, "hidden": [8]},
}


def tiny_patch(method: str, request: pytest.FixtureRequest) -> tuple[PatchInputs, dict[str, Any]]:
    """Inputs of the method's modality (a random tiny encoder, one bug, labelled data), its params."""
    if method not in TINY_PATCH_PARAMS or method not in PATCH_MODALITY:
        pytest.fail(f"patch method {method!r} is registered but has no tiny params or modality: "
                    f"add it to TINY_PATCH_PARAMS and PATCH_MODALITY in tests/helpers/tiny.py",
                    pytrace=False)
    tiny = tiny_adapter("small_cnn" if PATCH_MODALITY[method] == "image" else "hf_text", request)
    encoder = tiny.adapter.build().eval()
    labels = np.arange(len(tiny.raw)) % 2
    bug = Bug("b", "t", 1, 0, tiny.adapter.stamp(tiny.raw[:1], tiny.trigger)[0], tiny.raw[1], tiny.trigger)
    inputs = PatchInputs(encoder, tiny.adapter, tiny.raw, [bug], {"t": LabelledSet(tiny.raw, labels)})
    return inputs, TINY_PATCH_PARAMS[method]
