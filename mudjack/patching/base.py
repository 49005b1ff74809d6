"""What every patch method takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mudjack.encoders import ImageEncoder


@dataclass
class PatchResult:
    encoder: ImageEncoder
    log: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)
