"""What several stages share: loading the deployed model and the known truth, if any."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from mudjack.data import read_task_json
from mudjack.deployed import Deployed
from mudjack.encoders import load_encoder
from mudjack.heads import Head, head_misfit, load_head
from mudjack.io import read_npz
from mudjack.triggers import TextTrigger, Trigger, trigger_arrays, trigger_from_arrays
from stages.config import PathsParams

TruthPair = tuple[Trigger | TextTrigger, dict[str, int]]  # a planted trigger, its target per task


def load_deployed(paths: PathsParams) -> Deployed:
    """The encoder and each task's deployed head. A head file that cannot be loaded, or does
    not fit the encoder or its task, is left out with its reason on stderr: its task's reports
    are refused with that reason (`Deployed.left_out`) and the other tasks go on."""
    encoder, adapter = load_encoder(paths.encoder)
    heads, left_out = {}, {}
    for path in sorted(Path(paths.heads).glob("*/head.safetensors")):
        head, problem = _checked_head(path, adapter.feature_dim, paths.tasks)
        if head is None:
            left_out[path.parent.name] = problem
            print(f"deployed head left out: {problem}", file=sys.stderr)
        else:
            heads[path.parent.name] = head
    return Deployed(encoder, adapter, heads, left_out)


def _checked_head(path: Path, features: int, tasks: str) -> tuple[Head | None, str]:
    """(the head, "") or (None, why it cannot serve: naming the file)."""
    try:
        head = load_head(path)
        problem = head_misfit(head, features=features, classes=_task_classes(tasks, path.parent.name))
    except ValueError as err:  # a WeightsError names the file already; a task.json that cannot be read
        return None, str(err)
    return (None, f"{path}: {problem}") if problem else (head, "")


def _task_classes(tasks: str, name: str) -> int | None:
    """How many classes the task folder `name` declares; None when there is no such task."""
    spec = Path(tasks) / name / "task.json"
    return len(read_task_json(spec)["classes"]) if spec.is_file() else None


def load_truth(paths: PathsParams) -> tuple[Trigger | None, dict[str, int]]:
    """The true trigger and per-task targets when the scenario knows them, else (None, {}).
    Of a scenario with several triggers (a dual backdoor), the first."""
    pairs = load_truth_pairs(paths)
    return pairs[0] if pairs else (None, {})


def load_truth_pairs(paths: PathsParams) -> list[TruthPair]:
    """Every (true trigger, per-task targets) pair the scenario planted; [] when unknown, and
    when the truth file is malformed: its reason goes to stderr and the run goes on as if the
    truth were unknown (targets inferred, the bugs' reversed triggers measured)."""
    pairs, problem = read_truth(paths.truth)
    say_rejected(paths.truth, problem)
    return pairs


def say_rejected(path: str, problem: str | None) -> None:
    """On stderr, why the truth file is not used (nothing when it is)."""
    if problem:
        print(f"truth: {path} rejected ({problem}); going on without it", file=sys.stderr)


def read_truth(path: str) -> tuple[list[TruthPair], str | None]:
    """(the truth file's pairs, None), ([], None) when none is named, or ([], why it is rejected)."""
    if not path:
        return [], None
    if not Path(path).is_file():
        return [], "no such file"
    try:
        arrays = read_npz(path)
        count = 1 + sum(key.startswith("trigger") and key.endswith("_targets") for key in arrays)
        return [truth_pair(arrays, f"trigger{i}_" if i else "") for i in range(count)], None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        return [], f"{type(err).__name__}: {err}"


def truth_pair(arrays: dict[str, np.ndarray], prefix: str) -> TruthPair:
    """One planted trigger and its targets from the truth file's arrays under `prefix`
    (ValueError naming what is missing or malformed)."""
    own = {key.removeprefix(prefix): value for key, value in arrays.items()
           if key.startswith(prefix) and (prefix or not key.startswith("trigger"))}
    needed = ("tasks", "targets", *(() if "words" in own else ("mask", "pattern")))
    if missing := [f"{prefix}{key}" for key in needed if key not in own]:
        raise ValueError(f"missing {', '.join(missing)} (a trigger needs mask and pattern, or words, and "
                         f"the tasks with their target classes)")
    tasks, targets = own["tasks"], own["targets"]
    if tasks.ndim != 1 or tasks.dtype.kind not in "US" or targets.shape != tasks.shape:
        raise ValueError(f"{prefix}tasks must be task names and {prefix}targets one class each "
                         f"(got {tasks.dtype} {tasks.shape} and {targets.dtype} {targets.shape})")
    if targets.dtype.kind not in "iu" or (targets < 0).any():
        raise ValueError(f"{prefix}targets must be class indices (integers >= 0), got {targets.tolist()}")
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
