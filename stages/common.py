"""What several stages share: loading the deployed model and the known truth, if any."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mudjack.deployed import Deployed
from mudjack.encoders import load_encoder
from mudjack.heads import load_head
from mudjack.io import read_npz
from mudjack.triggers import TextTrigger, Trigger, trigger_arrays, trigger_from_arrays
from stages.config import PathsParams


def load_deployed(paths: PathsParams) -> Deployed:
    encoder, adapter = load_encoder(paths.encoder)
    heads = {p.parent.name: load_head(p) for p in sorted(Path(paths.heads).glob("*/head.safetensors"))}
    return Deployed(encoder, adapter, heads)


def load_truth(paths: PathsParams) -> tuple[Trigger | None, dict[str, int]]:
    """The true trigger and per-task targets when the scenario knows them, else (None, {})."""
    if not paths.truth or not Path(paths.truth).is_file():
        return None, {}
    arrays = read_npz(paths.truth)
    targets = {str(t): int(c) for t, c in zip(arrays["tasks"], arrays["targets"], strict=True)}
    return trigger_from_arrays(arrays), targets


def truth_arrays(trigger: Trigger | TextTrigger, targets: dict[str, int]) -> dict[str, np.ndarray]:
    return {**trigger_arrays(trigger), "tasks": np.array(list(targets), dtype=np.str_),
            "targets": np.array(list(targets.values()), dtype=np.int64)}
