"""A bring-your-own project built from a test scenario: the user's files under byo/ (encoder,
deployed head, tasks, shadow set, one genuine report in the inbox) and a params.yaml pointing
`paths` at them, with no truth file; and the repair stages run on it in-process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

from mudjack.data import LabelledSet, Task, save_task
from mudjack.encoders import save_encoder
from mudjack.features import extract_features
from mudjack.heads import predict, save_head
from mudjack.io import write_npz

if TYPE_CHECKING:
    from tests.conftest import Scenario

ROOT = Path(__file__).resolve().parents[2]
PATHS = {"shadow": "byo/shadow.npz", "tasks": "byo/tasks", "encoder": "byo/encoder.safetensors",
         "heads": "byo/deployed", "inbox": "byo/inbox", "truth": ""}


def parity(task: Task) -> Task:
    """A second task on the same encoder: the digits' parity (0 even, 1 odd)."""
    def relabel(part: LabelledSet) -> LabelledSet:
        return LabelledSet(part.x, part.y % 2)
    return Task("parity", [0, 1], relabel(task.train), relabel(task.test))


def write_project(root: Path, scenario: Scenario, *, tasks: list[Task],
                  overrides: dict[str, dict[str, Any]]) -> None:
    """The user's files: the encoder, the scenario task's deployed head, `tasks`, the shadow
    set and one report from the scenario's task (a triggered test input sent to the target);
    params.yaml is the project's with `overrides` merged into its sections."""
    from stages.attack import write_inbox

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = PATHS
    for section, values in overrides.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    save_encoder(scenario.backdoored, scenario.adapter, root / PATHS["encoder"])
    save_head(scenario.head, root / PATHS["heads"] / scenario.task.name / "head.safetensors")
    for task in tasks:
        save_task(task, root / PATHS["tasks"] / task.name)
    write_npz(root / PATHS["shadow"], x=scenario.shadow)
    test = scenario.task.test
    stamped = scenario.adapter.stamp(test.x, scenario.trigger)
    predicted = predict(scenario.head, extract_features(scenario.backdoored, scenario.adapter, stamped))
    bug = np.flatnonzero((test.y != scenario.target) & (predicted == scenario.target))[:1]
    (root / PATHS["inbox"]).mkdir(parents=True)
    write_inbox(root / PATHS["inbox"], scenario.task.name, stamped[bug], test.y[bug], predicted[bug], "r")


def run_repair(root: Path, *, validate: bool) -> None:
    """The repair stages in `root`, in-process: validate (else its result written as passed),
    intake, patch, retrain, export, report."""
    from mudjack.io import write_json
    from stages import export, intake, patch, report, retrain
    from stages.artifacts import VALIDATION

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        if validate:
            from stages import validate as validate_stage

            assert validate_stage.main() == 0
        else:
            write_json(VALIDATION, {"reports": {"rejected": {}}})
        for stage in (intake, patch, retrain, export, report):
            stage.main()
