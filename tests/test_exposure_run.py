"""A bring-your-own run with two tasks on one backdoored encoder and a report from one of
them: metrics.json, the terminal table, the run report and the gates cover both tasks.

The repair stages run in-process (intake, patch, retrain, export, report; validation is
written as passed) on the tiny digits scenario of tests/conftest.py, with no truth file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml
from rich.console import Console

from mudjack.data import LabelledSet, Task, save_task
from mudjack.encoders import save_encoder
from mudjack.features import extract_features
from mudjack.heads import predict, save_head
from mudjack.io import read_json, write_json, write_npz
from stages.artifacts import METRICS, RUN_HTML, VALIDATION

if TYPE_CHECKING:
    from tests.conftest import Scenario

ROOT = Path(__file__).resolve().parents[1]

TINY = {"patch": {"epochs": 3, "shadow_fraction": 0.5}, "retrain": {"epochs": 40}}
PATHS = {"shadow": "byo/shadow.npz", "tasks": "byo/tasks", "encoder": "byo/encoder.safetensors",
         "heads": "byo/deployed", "inbox": "byo/inbox", "truth": ""}


def parity(task: Task) -> Task:
    """A second task on the same encoder: the digits' parity (0 even, 1 odd)."""
    def relabel(part: LabelledSet) -> LabelledSet:
        return LabelledSet(part.x, part.y % 2)
    return Task("parity", [0, 1], relabel(task.train), relabel(task.test))


def write_project(root: Path, scenario: Scenario) -> None:
    """The user's files (encoder, digits head, two tasks, shadow set, one digits report)."""
    from stages.attack import write_inbox

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = PATHS
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    save_encoder(scenario.backdoored, scenario.adapter, root / PATHS["encoder"])
    save_head(scenario.head, root / PATHS["heads"] / "digits" / "head.safetensors")
    for task in (scenario.task, parity(scenario.task)):
        save_task(task, root / PATHS["tasks"] / task.name)
    write_npz(root / PATHS["shadow"], x=scenario.shadow)
    test = scenario.task.test
    stamped = scenario.adapter.stamp(test.x, scenario.trigger)
    predicted = predict(scenario.head, extract_features(scenario.backdoored, scenario.adapter, stamped))
    bug = np.flatnonzero((test.y != scenario.target) & (predicted == scenario.target))[:1]
    (root / PATHS["inbox"]).mkdir(parents=True)
    write_inbox(root / PATHS["inbox"], "digits", stamped[bug], test.y[bug], predicted[bug], "r")
    write_json(root / VALIDATION, {"reports": {"rejected": {}}})


@pytest.fixture(scope="module")
def byo_run(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages import export, intake, patch, report, retrain

    root = tmp_path_factory.mktemp("byo")
    write_project(root, scenario)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        for stage in (intake, patch, retrain, export, report):
            stage.main()
    return root


def test_metrics_carry_asr_of_both_tasks(byo_run: Path) -> None:
    tasks = read_json(byo_run / METRICS)["tasks"]
    assert set(tasks) == {"digits", "parity"}
    (bug,) = [folder.name for folder in (byo_run / "bugs").iterdir() if folder.is_dir()]
    for name, result in tasks.items():
        exposure = result["exposure"]
        assert exposure["exposed"] is True and exposure["trigger"] == f"bug:{bug}", name
        assert exposure["target_from"] == "inferred"
        assert set(exposure["triggers"]) == {f"bug:{bug}"}
        for model in ("backdoored", "patched"):
            assert all(isinstance(result[model][k], float) for k in ("clean_acc", "asr", "tba"))
    # parity never reported: its target is inferred, the class of the backdoor's digit 0 (even)
    assert tasks["parity"]["exposure"]["target"] == 0
    assert tasks["parity"]["backdoored"]["asr"] > 0.5


def test_terminal_table_shows_both_tasks(byo_run: Path) -> None:
    from pipeline.cli import metrics_table
    from pipeline.flow import metrics_rows, read_metrics

    console = Console(record=True, width=220)
    console.print(metrics_table(metrics_rows(read_metrics(byo_run))))
    text = console.export_text()
    tasks = read_json(byo_run / METRICS)["tasks"]
    for name in ("digits", "parity"):
        line = next(row for row in text.splitlines() if f" {name} " in row)
        asr = tasks[name]["backdoored"]["asr"], tasks[name]["patched"]["asr"]
        assert f"{asr[0]:.4f} -> {asr[1]:.4f}" in line and "bug:" in line and "True" in line


def test_run_report_has_an_exposure_panel_for_both_tasks(byo_run: Path) -> None:
    page = (byo_run / RUN_HTML).read_text()
    panel = page[page.index('<section id="exposure">'):]
    panel = panel[:panel.index("</section>")]
    tasks = read_json(byo_run / METRICS)["tasks"]
    for name in ("digits", "parity"):
        assert f"<td>{name}</td><td>True</td><td>bug:" in panel
        assert f"<td>{tasks[name]['patched']['asr']:.4g}</td>" in panel


def test_gates_judge_both_tasks(byo_run: Path) -> None:
    from pipeline.gates import check_project

    judged = {(r.gate, r.subject): r for r in check_project(byo_run)}
    for name in ("digits", "parity"):
        for gate in ("max_patched_asr", "max_clean_acc_drop"):
            assert judged[gate, name].value is not None and judged[gate, name].note == ""
