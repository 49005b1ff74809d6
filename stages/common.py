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
    """The true trigger and per-task targets when the scenario knows them, else (None, {}).
    Of a scenario with several triggers (a dual backdoor), the first."""
    pairs = load_truth_pairs(paths)
    return pairs[0] if pairs else (None, {})


def load_truth_pairs(paths: PathsParams) -> list[tuple[Trigger | TextTrigger, dict[str, int]]]:
    """Every (true trigger, per-task targets) pair the scenario planted; [] when unknown."""
    if not paths.truth or not Path(paths.truth).is_file():
        return []
    arrays = read_npz(paths.truth)
    count = 1 + sum(key.startswith("trigger") and key.endswith("_targets") for key in arrays)
    return [truth_pair(arrays, f"trigger{i}_" if i else "") for i in range(count)]


def truth_pair(arrays: dict[str, np.ndarray], prefix: str) -> tuple[Trigger | TextTrigger, dict[str, int]]:
    own = {key.removeprefix(prefix): value for key, value in arrays.items()
           if key.startswith(prefix) and (prefix or not key.startswith("trigger"))}
    targets = {str(t): int(c) for t, c in zip(own["tasks"], own["targets"], strict=True)}
    return trigger_from_arrays(own), targets


def truth_arrays(trigger: Trigger | TextTrigger, targets: dict[str, int]) -> dict[str, np.ndarray]:
    return {**trigger_arrays(trigger), "tasks": np.array(list(targets), dtype=np.str_),
            "targets": np.array(list(targets.values()), dtype=np.int64)}
