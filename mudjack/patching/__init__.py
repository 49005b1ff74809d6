"""Patch methods behind one signature, chosen by `patch.method` in params.yaml."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mudjack.bugs import Bug
from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.patching.base import PatchResult
from mudjack.patching.mudjacking import MudjackingParams, mudjacking

PatchFunction = Callable[..., PatchResult]

# name -> (parameter model, function(encoder, adapter, shadow, bugs, params, seed))
PATCH_METHODS: dict[str, tuple[type[Params], PatchFunction]] = {
    "mudjacking": (MudjackingParams, mudjacking),
}


def run_patch(method: str, encoder: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray,
              bugs: list[Bug], params: dict[str, Any], seed: int = 0) -> PatchResult:
    if method not in PATCH_METHODS:
        raise KeyError(f"unknown patch method {method!r}; known: {sorted(PATCH_METHODS)}")
    params_model, function = PATCH_METHODS[method]
    return function(encoder, adapter, shadow, bugs, params_model(**params), seed)


__all__ = ["PATCH_METHODS", "PatchResult", "MudjackingParams", "mudjacking", "run_patch"]
