"""The real dvc.yaml, end to end on tiny settings: a Prefect flow run, then `dvc repro`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.dag import run_dvc
from pipeline.flow import repair
from stages.artifacts import INTAKE_LOG

ALL_STAGES = ["prepare", "foundation", "attack", "validate", "intake", "patch", "retrain",
              "export", "report"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, project_copy) -> Path:
    """A copy of the project (code, dvc.yaml, tiny params.yaml) in a fresh git + DVC repo."""
    return project_copy(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def flow_result(project: Path, prefect_server: None) -> dict:
    return repair(root=str(project), target="report")


def test_the_flow_runs_every_stage_and_repairs_the_encoder(project: Path, flow_result: dict):
    assert flow_result["stages"] == ALL_STAGES
    assert flow_result["ran"] == ALL_STAGES
    digits = flow_result["metrics"]["tasks"]["digits"]
    assert digits["backdoored"]["asr"] >= 0.8
    assert digits["patched"]["asr"] <= 0.2
    assert digits["patched"]["clean_acc"] >= digits["backdoored"]["clean_acc"] - 0.08
    assert flow_result["metrics"]["export"]["max_abs_diff"] <= 1e-4
    log = (project / INTAKE_LOG).read_text()
    assert '"decision": "rejected"' in log and "does not reproduce" in log
    assert (project / "models" / "onnx" / "digits.onnx").is_file()


def test_a_second_repro_runs_nothing(project: Path, flow_result: dict):
    output = run_dvc([sys.executable, "-m", "dvc", "repro", "report"], cwd=project)  # the flow's target
    assert ran_stages(output) == []


def test_changing_a_patch_parameter_reruns_patch_and_what_follows(project: Path,
                                                                  flow_result: dict):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["patch"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run_dvc([sys.executable, "-m", "dvc", "repro", "report"], cwd=project)
    assert ran_stages(output) == ["patch", "retrain", "export", "report"]


def test_a_code_change_in_an_imported_module_marks_its_stages_changed(project: Path, flow_result: dict):
    """Reproducibility: editing a module the report stage imports (only through the core) makes
    `dvc status` report that stage, so `dvc repro` cannot reuse its stale result."""
    module = project / "mudjack" / "html_report.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    status = run_dvc([sys.executable, "-m", "dvc", "status"], cwd=project)
    report = status.split("report:", 1)[1].split("\n\n", 1)[0]  # the report stage's entry
    assert "modified:" in report and "mudjack/html_report.py" in report
