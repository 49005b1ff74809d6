"""What every patch method takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mudjack.bugs import Bug
from mudjack.data import LabelledSet
from mudjack.encoders import EncoderAdapter, ImageEncoder


@dataclass
class PatchResult:
    encoder: ImageEncoder
    log: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PatchInputs:
    """Everything a patch method may use; each method takes what it needs."""

    encoder: ImageEncoder
    adapter: EncoderAdapter
    shadow: np.ndarray                  # unlabelled clean inputs (Mudjacking)
    bugs: list[Bug]
    labelled: dict[str, LabelledSet] = field(default_factory=dict)  # clean labelled data (FT, SFT)
