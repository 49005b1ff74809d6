"""The truth file: the triggers a scenario planted and their target class per task (an npz).

The first trigger's arrays sit under plain keys, trigger i > 0's under `trigger{i}_` keys: an
image trigger is `mask` (H, W; bool, or alpha in [0, 1]) and `pattern` (H, W, C pixels 0-255), a
text trigger `words` (and `position`); a warp is `flow` (H, W, 2 pixel offsets, rows then
columns), alone or with a mask and pattern blended after it; each has `tasks` (names) and
`targets` (one class each). A malformed file is rejected whole, with its reason (`read_truth`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mudjack.io import read_npz
from mudjack.triggers import TextTrigger, Trigger, trigger_arrays, trigger_from_arrays

TruthPair = tuple[Trigger | TextTrigger, dict[str, int]]  # a planted trigger, its target per task
# What intake measures a reversed trigger against: one trigger, or every pair of the truth file
# (a report is then measured against the trigger that targets the class it was misread as).
Truth = Trigger | TextTrigger | list[TruthPair] | None


def read_truth(path: str) -> tuple[list[TruthPair], str | None]:
    """(the truth file's pairs, None), ([], None) when none is named, or ([], why it is rejected)."""
    if not path:
        return [], None
    if not Path(path).exists():
        return [], "no such file"
    try:
        arrays = read_npz(path)
        return [truth_pair(arrays, f"trigger{i}_" if i else "") for i in range(_count(arrays))], None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        return [], f"{type(err).__name__}: {err}"


def _count(arrays: dict[str, np.ndarray]) -> int:
    """How many triggers the file holds: the plain one and `trigger1_` .. `triggerN_`, none
    skipped (a `trigger2_` without `trigger1_` keys is malformed, not a lone first trigger)."""
    extra = {int(match[1]) for key in arrays if (match := re.match(r"trigger([0-9]+)_", key))}
    if extra != set(range(1, len(extra) + 1)):
        raise ValueError(f"trigger keys must number 1, 2, ... without a gap, got {sorted(extra)}")
    return 1 + len(extra)


def truth_for(truth: Truth, task: str, predicted: int) -> Trigger | TextTrigger | None:
    """The true trigger a report of `task` misread as `predicted` is measured against: of
    several, the one whose target there is `predicted` (else the first)."""
    if not isinstance(truth, list):
        return truth
    matching = [trigger for trigger, targets in truth if targets.get(task) == predicted]
    return (matching or [trigger for trigger, _ in truth] or [None])[0]


def unknown_tasks(pairs: list[TruthPair], tasks: Iterable[str]) -> list[str]:
    """The tasks the truth file gives targets for that are not tasks here (a typo, or a task
    since removed): their targets are not used; the triggers are still measured on every task,
    each target inferred where none is known."""
    return sorted({task for _, targets in pairs for task in targets} - set(tasks))


def truth_pair(arrays: dict[str, np.ndarray], prefix: str) -> TruthPair:
    """One planted trigger and its targets from the truth file's arrays under `prefix`
    (ValueError naming what is missing or malformed)."""
    own = {key.removeprefix(prefix): value for key, value in arrays.items()
           if key.startswith(prefix) and (prefix or not key.startswith("trigger"))}
    alone = "words" in own or ("flow" in own and "mask" not in own and "pattern" not in own)
    needed = ("tasks", "targets", *(() if alone else ("mask", "pattern")))
    if missing := [f"{prefix}{key}" for key in needed if key not in own]:
        raise ValueError(f"missing {', '.join(missing)} (a trigger needs mask and pattern, a flow, or "
                         f"words, and the tasks with their target classes)")
    tasks, targets = own["tasks"], own["targets"]
    if tasks.dtype.kind == "S":  # names saved as bytes: b"digits" is task "digits"
        tasks = np.char.decode(tasks, "utf-8")
    if tasks.ndim != 1 or tasks.dtype.kind != "U" or targets.shape != tasks.shape:
        raise ValueError(f"{prefix}tasks must be task names and {prefix}targets one class each "
                         f"(got {tasks.dtype} {tasks.shape} and {targets.dtype} {targets.shape})")
    if targets.dtype.kind not in "iu" or (targets < 0).any():
        raise ValueError(f"{prefix}targets must be class indices (integers >= 0), got {targets.tolist()}")
    if len(set(tasks.tolist())) < len(tasks):  # one trigger has one target per task
        raise ValueError(f"{prefix}tasks names a task twice: {tasks.tolist()}")
    return trigger_from_arrays(own), {str(t): int(c) for t, c in zip(tasks, targets, strict=True)}


def truth_arrays(pairs: list[TruthPair]) -> dict[str, np.ndarray]:
    """The truth file: the first pair under plain keys, pair i > 0 under `trigger{i}_` keys."""
    out: dict[str, np.ndarray] = {}
    for i, (trigger, targets) in enumerate(pairs):
        prefix = f"trigger{i}_" if i else ""
        arrays = {**trigger_arrays(trigger), "tasks": np.array(list(targets), dtype=np.str_),
                  "targets": np.array(list(targets.values()), dtype=np.int64)}
        out.update({prefix + key: value for key, value in arrays.items()})
    return out
