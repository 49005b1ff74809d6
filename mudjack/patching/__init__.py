"""Patch methods behind one signature, chosen by `patch.method` in params.yaml.

Every method takes (PatchInputs, its typed params, *, seed) and returns a PatchResult.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mudjack.config import Params, ParamsError
from mudjack.patching.base import PatchInputs, PatchResult
from mudjack.patching.finetune import FinetuneParams, SuperFinetuneParams, finetune, super_finetune
from mudjack.patching.mudjacking import MudjackingParams, mudjacking
from mudjack.patching.pool import task_pool
from mudjack.patching.text_mudjacking import TextMudjackingParams, text_mudjacking

PatchFunction = Callable[..., PatchResult]


def _mudjacking(inputs: PatchInputs, params: MudjackingParams, *, seed: int = 0,
                **options: Any) -> PatchResult:
    if inputs.adapter.modality == "text":
        raise ValueError("a text encoder is patched with patch.method `mudjacking_text`")
    shadow = task_pool(inputs, params.task_images, seed=seed)
    return mudjacking(inputs.encoder, inputs.adapter, shadow, inputs.bugs, params, seed=seed, **options)


def _mudjacking_text(inputs: PatchInputs, params: TextMudjackingParams, *, seed: int = 0) -> PatchResult:
    if inputs.adapter.modality != "text":
        raise ValueError("mudjacking_text patches text encoders; use `mudjacking` for images")
    return text_mudjacking(inputs.encoder, inputs.adapter, inputs.shadow, inputs.bugs, params, seed=seed)


# name -> (parameter model, function(inputs, params, *, seed))
PATCH_METHODS: dict[str, tuple[type[Params], PatchFunction]] = {
    "mudjacking": (MudjackingParams, _mudjacking),
    "mudjacking_text": (TextMudjackingParams, _mudjacking_text),
    "finetune": (FinetuneParams, finetune),
    "super_finetune": (SuperFinetuneParams, super_finetune),
}


# The method that patches a text encoder in place of each image method that has a text loop.
TEXT_VARIANTS = {"mudjacking": "mudjacking_text", "mudjacking_text": "mudjacking_text"}
TEXT_ONLY = {"mudjacking_text"}  # methods that loop over sentences


def method_for(method: str, modality: str) -> str:
    """The registered method that runs `method` on an encoder of `modality` ("image" | "text");
    a text-only method on an image encoder is a ParamsError."""
    if modality == "text":
        return TEXT_VARIANTS.get(method, method)
    if method in TEXT_ONLY:
        raise ParamsError(f"patch.method {method!r} patches text encoders; this encoder takes images "
                          f"(use {sorted(set(PATCH_METHODS) - TEXT_ONLY)})")
    return method


def training_pool(method: str, inputs: PatchInputs, params: dict[str, Any], *,
                  seed: int = 0) -> np.ndarray:
    """The unlabelled set `method` trains on with `params`: the shadow set, and for Mudjacking
    the tasks' images its `task_images` adds (what a checkpoint of the run must be keyed on)."""
    count = getattr(PATCH_METHODS[method][0](**params), "task_images", 0)
    return task_pool(inputs, count, seed=seed)


def run_patch(method: str, inputs: PatchInputs, params: dict[str, Any], *, seed: int = 0,
              **options: Any) -> PatchResult:
    """Run a registered method; `params` are validated against its parameter model."""
    if method not in PATCH_METHODS:
        raise KeyError(f"unknown patch method {method!r}; known: {sorted(PATCH_METHODS)}")
    params_model, function = PATCH_METHODS[method]
    return function(inputs, params_model(**params), seed=seed, **options)


__all__ = ["PATCH_METHODS", "TEXT_VARIANTS", "method_for", "training_pool", "PatchInputs", "PatchResult",
           "MudjackingParams", "FinetuneParams", "SuperFinetuneParams", "TextMudjackingParams",
           "run_patch"]
