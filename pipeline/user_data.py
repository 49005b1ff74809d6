"""A run never overwrites the data a repair starts from.

`paths` in params.yaml names the user's encoder, heads, tasks, shadow set, inbox and truth.
In the embedded default they are the scenario stages' outputs (attack writes the deployed
encoder, heads and inbox), so `dvc repro` reruns a scenario stage whenever one of them
changed, and would write its own over a report submitted to that inbox, or over a user's
encoder kept at the default path in a bring-your-own project. Before anything runs, a planned
stage with an output that holds a `paths` entry and that differs from what the stage last
wrote (or that it never wrote) stops the run, naming both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from dvc.output import Output
    from dvc.stage import Stage


def repair_inputs(root: Path) -> dict[str, str]:
    """The `paths` entries of `root`/params.yaml that name a file or folder (none when the
    file or section is unusable: the stages report that themselves)."""
    try:
        paths = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")).get("paths")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return {}
    if not isinstance(paths, Mapping):
        return {}
    return {str(key): os.path.normpath(value) for key, value in paths.items()
            if isinstance(value, str) and value.strip()}


def _overlap(a: str, b: str) -> bool:
    """Whether one of two relative paths is the other or inside it."""
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def overwritten_inputs(stages: Iterable[Stage], inputs: Mapping[str, str]) -> list[str]:
    """One line per planned stage output that would overwrite a `paths` entry changed
    outside the stage."""
    problems = []
    for stage in stages:
        for out in stage.outs:
            held = [key for key, value in inputs.items() if _overlap(os.path.normpath(out.def_path), value)]
            if held and _changed_outside(out):
                names = ", ".join(f"paths.{key} ({inputs[key]})" for key in held)
                problems.append(f"stage '{stage.name}' would overwrite {out.def_path}, which holds "
                                f"{names} and is not what the stage last wrote")
    return problems


def _changed_outside(out: Output) -> bool:
    """The output exists and differs from the hash dvc.lock records for it (or has none)."""
    return bool(out.exists) and bool(out.changed_checksum())


def check_inputs_kept(root: Path, stages: Sequence[Stage]) -> None:
    """A DvcException (as for any plan DVC refuses) when a planned stage would overwrite the
    data a repair starts from."""
    from dvc.exceptions import DvcException

    if problems := overwritten_inputs(stages, repair_inputs(root)):
        raise DvcException("; ".join(problems) + ": a run never replaces your data; point those "
                         "paths at files no stage writes (dvc.yaml's outs), or move them away "
                         "to let the scenario stages make theirs")
