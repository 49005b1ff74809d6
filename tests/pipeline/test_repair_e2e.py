"""The real dvc.yaml, end to end on tiny settings: a Prefect flow run, then `dvc repro`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.dag import run_dvc
from pipeline.flow import repair

ROOT = Path(__file__).resolve().parents[2]
ALL_STAGES = ["prepare", "foundation", "attack", "validate", "intake", "patch", "retrain",
              "export", "report"]
TINY = {
    "foundation": {"width": 8, "feature_dim": 32, "epochs": 4},
    "attack": {"epochs": 12, "deployed_head": {"epochs": 40}},
    "patch": {"epochs": 8},
    "retrain": {"epochs": 40},
}


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (code, dvc.yaml, tiny params.yaml) in a fresh git + DVC repo."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("project")
    for name in ("mudjack", "stages", "pipeline"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    with Repo.init(str(root)) as repo, repo.config.edit() as config:
        config["core"]["analytics"] = False
    return root


@pytest.fixture(scope="module")
def flow_result(project: Path, prefect_server: None) -> dict:
    return repair(root=str(project), target="report")


def test_the_flow_runs_every_stage_and_repairs_the_encoder(project: Path, flow_result: dict):
    assert flow_result["stages"] == ALL_STAGES
    assert flow_result["ran"] == ALL_STAGES
    digits = flow_result["metrics"]["tasks"]["digits"]
    assert digits["backdoored"]["asr"] >= 0.8
    assert digits["patched"]["asr"] <= 0.2
    assert digits["patched"]["clean_acc"] >= digits["backdoored"]["clean_acc"] - 0.05
    assert flow_result["metrics"]["export"]["max_abs_diff"] <= 1e-4
    log = (project / "reports" / "intake_log.jsonl").read_text()
    assert '"decision": "rejected"' in log and "does not reproduce" in log
    assert (project / "models" / "onnx" / "digits.onnx").is_file()


def test_a_second_repro_runs_nothing(project: Path, flow_result: dict):
    output = run_dvc([sys.executable, "-m", "dvc", "repro"], cwd=project)
    assert ran_stages(output) == []


def test_changing_a_patch_parameter_reruns_patch_and_what_follows(project: Path,
                                                                  flow_result: dict):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["patch"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run_dvc([sys.executable, "-m", "dvc", "repro"], cwd=project)
    assert ran_stages(output) == ["patch", "retrain", "export", "report"]
