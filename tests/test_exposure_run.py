"""A bring-your-own run with two tasks on one backdoored encoder and a report from one of
them: metrics.json, the terminal table, the run report and the gates cover both tasks.

The repair stages run in-process (intake, patch, retrain, export, report; validation is
written as passed) on the tiny digits scenario of tests/conftest.py, with a truth file a
careless generator wrote (its pattern in 16-bit values past 255): it is rejected with its
reason, and the run measures what it would without one (targets inferred, bugs' triggers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from rich.console import Console

from mudjack.io import read_json, write_npz
from stages.artifacts import METRICS, RUN_HTML
from tests.helpers.byo import parity, run_repair, write_project

if TYPE_CHECKING:
    from tests.conftest import Scenario

TINY = {"patch": {"epochs": 3, "shadow_fraction": 0.5}, "retrain": {"epochs": 40, "heads": 2},
        "paths": {"truth": "byo/truth.npz"}}


@pytest.fixture(scope="module")
def byo_run(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("byo")
    write_project(root, scenario, tasks=[scenario.task, parity(scenario.task)], overrides=TINY)
    trigger = scenario.trigger
    write_npz(root / "byo" / "truth.npz", mask=trigger.mask, pattern=trigger.pattern.astype(np.uint16) + 300,
              tasks=np.array([scenario.task.name]), targets=np.array([scenario.target]))
    run_repair(root, validate=False)
    return root


def test_a_malformed_truth_file_is_named_in_the_metrics_and_the_run_goes_on(byo_run: Path) -> None:
    metrics = read_json(byo_run / METRICS)
    assert "byo/truth.npz" not in metrics["truth_rejected"]  # the reason, not the path
    assert "pixels in [0, 255]" in metrics["truth_rejected"]
    assert all("truth" not in result["exposure"]["triggers"] for result in metrics["tasks"].values())
    summary = (byo_run / RUN_HTML).read_text().split('<section id="summary">')[1].split("</section>")[0]
    assert "<td>truth file</td><td>rejected: ValueError: a trigger&#x27;s pattern must be pixels" in summary


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


def test_metrics_are_the_mean_of_the_retrain_heads(byo_run: Path) -> None:
    for name, result in read_json(byo_run / METRICS)["tasks"].items():
        for model in ("backdoored", "patched"):
            each = result["per_head"][model]
            assert len(each["clean_acc"]) == len(each["asr"]) == 2, name
            for metric in ("clean_acc", "asr", "flip_asr"):
                assert result[model][metric] == pytest.approx(np.mean(each[metric])), (name, metric)


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
