"""Damaged stage summaries the report stage reads (retrain, patch, export, the patch log): one
ArtifactError naming the file and the field, before anything is written, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mudjack.io import ArtifactError
from stages import report
from stages.artifacts import BEFORE_AFTER, METRICS, RUN_HTML

SCORES = {"clean_acc": 0.9, "asr": None}
GOOD = {"retrain.json": {"tasks": {"digits": {"backdoored": SCORES, "patched": SCORES}}},
        "patch.json": {"method": "mudjacking", "bugs": 0, "seconds": 0.0, "steps": 0},
        "export.json": {"max_abs_diff": 1e-6, "tasks": ["digits"]},
        "patch_log.json": [{"epoch": 1, "loss": -1.5}]}
DAMAGED = [  # file, content, the reason after the file's name
    ("retrain.json", [], "Input should be a valid dictionary"),
    ("retrain.json", {}, "tasks: Field required"),
    ("retrain.json", {"tasks": []}, "tasks: Input should be a valid dictionary"),
    ("retrain.json", {"tasks": {"digits": 5}}, "tasks.digits: Input should be a valid dictionary"),
    ("retrain.json", {"tasks": {"digits": {"backdoored": SCORES}}}, "tasks.digits.patched: Field required"),
    ("retrain.json", {"tasks": {"digits": {"backdoored": SCORES, "patched": {"clean_acc": "0.9"}}}},
     "tasks.digits.patched.clean_acc: Input should be a valid number"),
    ("retrain.json", {"tasks": {"digits": {**GOOD["retrain.json"]["tasks"]["digits"], "exposure": []}}},
     "tasks.digits.exposure: Input should be a valid dictionary"),
    ("patch.json", {}, "seconds: Field required"),
    ("patch.json", [], "Input should be a valid dictionary"),
    ("patch.json", {**GOOD["patch.json"], "bugs": "2"}, "bugs: Input should be a valid integer"),
    ("export.json", {}, "max_abs_diff: Field required"),
    ("patch_log.json", {"a": 1}, "Input should be a valid list"),
    ("patch_log.json", [1, 2], "0: Input should be a valid dictionary"),
]


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with well-formed summaries, an empty bug registry and a previous run's outputs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bugs").mkdir()
    (tmp_path / "reports").mkdir()
    for name, content in GOOD.items():
        (tmp_path / "reports" / name).write_text(json.dumps(content))
    for output in (METRICS, BEFORE_AFTER, RUN_HTML):
        output.write_text("previous")
    return tmp_path / "reports"


def test_report_reads_well_formed_summaries(reports: Path) -> None:
    data = report.read_run()
    assert data.metrics["tasks"] == GOOD["retrain.json"]["tasks"]
    assert data.metrics["patch"] == {"method": "mudjacking", "bugs": 0, "seconds": 0.0}
    assert data.patch_log == GOOD["patch_log.json"] and data.decisions == []


@pytest.mark.parametrize(("name", "content", "reason"), DAMAGED)
def test_report_refuses_a_damaged_summary_before_writing(reports: Path, name: str, content: Any,
                                                          reason: str) -> None:
    """It rewrote metrics.json (once with the string "0.9" in it) before its traceback."""
    (reports / name).write_text(json.dumps(content))
    with pytest.raises(ArtifactError) as caught:
        report.main()
    assert str(caught.value).startswith(f"reports/{name}: {reason}")
    assert "\n" not in str(caught.value)
    assert [p.read_text() for p in (METRICS, BEFORE_AFTER, RUN_HTML)] == ["previous"] * 3
