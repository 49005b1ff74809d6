"""The Prefect flow: one task per stage, DVC skips what is up to date, metrics published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.dag import StageFailedError
from pipeline.flow import (
    ARTIFACT_KEY,
    FLOW_NAME,
    build_deployment,
    is_transient,
    metrics_rows,
    publish_metrics,
    read_metrics,
    repair,
    reproduce_stage,
)

METRICS = {
    "tasks": {
        "svhn": {
            "backdoored": {"clean_acc": 0.8, "asr": 0.9, "tba": 0.1},
            "patched": {"clean_acc": 0.79, "asr": 0.02, "tba": 0.75},
            "exposure": {"exposed": True, "trigger": "truth", "triggers": {}},
        },
        "digits": {"backdoored": {"clean_acc": 0.9}, "patched": {}},
    },
    "export": {"max_abs_diff": 1e-6},
    "patch": {"seconds": 3.0},
}


def test_reproduce_stage_runs_then_skips(tiny_repo: Path, run_log) -> None:
    assert reproduce_stage.fn(str(tiny_repo), "a") == {"stage": "a", "ran": True}
    assert reproduce_stage.fn(str(tiny_repo), "a") == {"stage": "a", "ran": False}
    assert run_log(tiny_repo) == ["a"]


def test_failing_stage_raises_naming_it(repo_factory) -> None:
    root = repo_factory('stages:\n  boom:\n    cmd: python -c "raise SystemExit(3)"\n')
    with pytest.raises(StageFailedError, match="stage 'boom' failed") as info:
        reproduce_stage.fn(str(root), "boom")
    assert not is_transient(info.value)


def test_only_transient_failures_are_retried() -> None:
    lock = "ERROR: Unable to acquire lock. Most likely another DVC process is running"
    assert is_transient(StageFailedError("a", 255, lock))
    assert is_transient(OSError("Too many open files"))
    assert not is_transient(StageFailedError("a", 255, "ValueError: bad input"))
    assert not is_transient(ValueError("bad input"))


def test_metrics_rows_one_per_task() -> None:
    rows = metrics_rows(METRICS)
    assert [r["task"] for r in rows] == ["digits", "svhn"]
    assert rows[1] == {
        "task": "svhn",
        "clean_acc_before": 0.8,
        "clean_acc_after": 0.79,
        "asr_before": 0.9,
        "asr_after": 0.02,
        "tba_before": 0.1,
        "tba_after": 0.75,
        "trigger": "truth",
        "exposed": True,
    }
    assert rows[0]["trigger"] is None and rows[0]["exposed"] is None
    assert rows[0]["asr_before"] is None and rows[0]["clean_acc_after"] is None


def test_no_metrics_file_publishes_nothing(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) is None
    assert publish_metrics.fn(str(tmp_path)) is None


def test_read_metrics(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    assert read_metrics(tmp_path) == METRICS


def test_build_deployment_has_cron_schedule(tiny_repo: Path) -> None:
    deployment = build_deployment("0 * * * *", str(tiny_repo))
    assert deployment.flow_name == FLOW_NAME
    assert [s.schedule.cron for s in deployment.schedules] == ["0 * * * *"]
    assert deployment.parameters == {"root": str(tiny_repo.resolve()), "target": "report",
                                     "promote": True, "remote": "", "webhook_url": ""}
    assert deployment.entrypoint == "pipeline.flow.repair"


def test_flow_end_to_end(prefect_server: None, tiny_repo: Path, run_log) -> None:
    from prefect.artifacts import Artifact

    summary = repair(root=str(tiny_repo), target="c")
    assert summary["stages"] == ["a", "b", "c"]
    assert summary["ran"] == ["a", "b", "c"]
    assert summary["metrics"]["tasks"]["digits"]["patched"]["asr"] == 0.01
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and artifact.type == "table"
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert table[0]["task"] == "digits" and table[0]["asr_after"] == 0.01

    # Second run: DVC finds every stage up to date.
    assert repair(root=str(tiny_repo), target="c")["ran"] == []
    assert run_log(tiny_repo) == ["a", "b", "c"]


def test_retry_condition_reads_the_failed_state() -> None:
    from prefect.states import Failed

    from pipeline.flow import _retry_if_transient

    lock = StageFailedError("a", 255, "Unable to acquire lock")
    assert _retry_if_transient(reproduce_stage, None, Failed(data=lock))
    bug = StageFailedError("a", 1, "Traceback ... KeyError")
    assert not _retry_if_transient(reproduce_stage, None, Failed(data=bug))


def test_serve_serves_the_deployment(tiny_repo: Path, monkeypatch) -> None:
    import prefect

    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    from pipeline.flow import serve

    serve("*/5 * * * *", str(tiny_repo), target="c")
    (deployment,) = served
    assert deployment.schedules[0].schedule.cron == "*/5 * * * *"
    assert deployment.parameters["target"] == "c"


FAILING = """\
stages:
  flaky:
    cmd: python fail.py flaky
  broken:
    cmd: python fail.py broken
"""
# flaky prints DVC's lock-contention message (transient), broken a plain bug (not transient).
FAIL_PY = """\
import sys
name = sys.argv[1]
open("runs.log", "a").write(name + "\\n")
print("ERROR: Unable to acquire lock" if name == "flaky" else "KeyError: 'x'")
sys.exit(3)
"""


@pytest.mark.parametrize(("stage", "attempts"), [("flaky", 2), ("broken", 1)])
def test_flow_retries_only_transient_failures(
    prefect_server: None, repo_factory, run_log, stage: str, attempts: int
) -> None:
    root = repo_factory(FAILING)
    (root / "fail.py").write_text(FAIL_PY)
    with pytest.raises(StageFailedError, match=f"stage '{stage}' failed"):
        repair(root=str(root), target=stage, retries=1)
    assert run_log(root) == [stage] * attempts
