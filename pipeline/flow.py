"""Prefect orchestration of the dvc.yaml stages: one task per stage, DVC decides what reruns.

Running the flow (`repair()` or `mudjack run`) needs a Prefect API. Without PREFECT_API_URL,
Prefect starts a temporary local server for the run. To watch runs in the UI or to `serve`
a schedule, start a server with `prefect server start --host 127.0.0.1` and export
PREFECT_API_URL=http://127.0.0.1:4200/api.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prefect
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.states import State

from pipeline.dag import StageFailedError, reproduce_command, run_dvc, stages_in_order
from pipeline.env import configure_environment

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

FLOW_NAME = "mudjack-repair"
DEPLOYMENT_NAME = "scheduled-repair"
ARTIFACT_KEY = "repair-metrics"
METRICS_FILE = Path("reports") / "metrics.json"
METRIC_NAMES = ("clean_acc", "asr", "tba")
RETRY_DELAY_SECONDS = 2
SKIPPED_MARKER = "didn't change, skipping"
# Failures worth a second try: another DVC process holding the repo lock, a busy resource.
# A stage whose own command fails (bad data, a bug) fails the same way again: no retry.
TRANSIENT_MARKERS = (
    "Unable to acquire lock",
    "Resource temporarily unavailable",
    "Connection reset",
    "Connection refused",
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a failure a retry can plausibly fix."""
    if isinstance(exc, StageFailedError):
        return any(marker in exc.output for marker in TRANSIENT_MARKERS)
    return isinstance(exc, OSError)


def _logger() -> Any:
    """The run logger inside a flow/task run, a plain logger otherwise (e.g. `task.fn()`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger(FLOW_NAME)


def _retry_if_transient(_task: Any, _run: TaskRun, state: State) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


@task(
    name="reproduce-stage",
    task_run_name="repro-{stage}",
    cache_policy=NO_CACHE,  # DVC, not Prefect, decides whether a stage is up to date
    retry_condition_fn=_retry_if_transient,
)
def reproduce_stage(root: str, stage: str) -> dict[str, Any]:
    """`dvc repro --single-item <stage>` in `root`; returns {stage, ran}."""
    output = run_dvc(reproduce_command(stage), cwd=Path(root), stage=stage)
    ran = SKIPPED_MARKER not in output
    _logger().info("%s %s\n%s", stage, "ran" if ran else "was up to date", output.strip())
    return {"stage": stage, "ran": ran}


def read_metrics(root: Path) -> dict[str, Any] | None:
    """The report stage's metrics.json under `root`, or None when it does not exist."""
    path = Path(root) / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per downstream task: each metric before (backdoored) and after (patched)."""
    rows = []
    for name, result in sorted(metrics.get("tasks", {}).items()):
        row: dict[str, Any] = {"task": name}
        for metric in METRIC_NAMES:
            row[f"{metric}_before"] = result.get("backdoored", {}).get(metric)
            row[f"{metric}_after"] = result.get("patched", {}).get(metric)
        rows.append(row)
    return rows


def _describe(metrics: dict[str, Any]) -> str:
    lines = ["Downstream metrics before (backdoored) and after (patched) the repair."]
    diff = metrics.get("export", {}).get("max_abs_diff")
    seconds = metrics.get("patch", {}).get("seconds")
    if diff is not None:
        lines.append(f"ONNX export max |diff|: {diff:g}.")
    if seconds is not None:
        lines.append(f"Patch time: {seconds:.1f} s.")
    return " ".join(lines)


@task(name="publish-metrics", cache_policy=NO_CACHE)
def publish_metrics(root: str) -> dict[str, Any] | None:
    """Publish metrics.json as the table artifact ARTIFACT_KEY; returns the metrics."""
    metrics = read_metrics(Path(root))
    if metrics is None:
        _logger().info("no %s: nothing to publish", METRICS_FILE)
        return None
    create_table_artifact(metrics_rows(metrics), key=ARTIFACT_KEY, description=_describe(metrics))
    return metrics


@flow(name=FLOW_NAME)
def repair(root: str = ".", target: str = "report", retries: int = 1) -> dict[str, Any]:
    """Bring `target` and its upstream stages of dvc.yaml up to date, one stage at a time.

    Each stage is a task running `dvc repro --single-item`, so up-to-date stages are skipped
    by DVC. `retries` applies only to transient failures (see `is_transient`).
    """
    root_path = Path(root).resolve()
    configure_environment(root_path)
    stages = stages_in_order(root_path, target)
    run = reproduce_stage.with_options(retries=retries, retry_delay_seconds=RETRY_DELAY_SECONDS)
    results = [run(str(root_path), stage) for stage in stages]
    metrics = publish_metrics(str(root_path))
    return {
        "stages": stages,
        "ran": [r["stage"] for r in results if r["ran"]],
        "metrics": metrics,
    }


def build_deployment(cron: str, root: str = ".", target: str = "report") -> RunnerDeployment:
    """A deployment of `repair` on the `cron` schedule (a RunnerDeployment for `serve`)."""
    parameters = {"root": str(Path(root).resolve()), "target": target}
    return repair.to_deployment(name=DEPLOYMENT_NAME, cron=cron, parameters=parameters)


def serve(cron: str, root: str = ".", target: str = "report") -> None:
    """Run `repair` on the `cron` schedule until interrupted (blocks).

    Needs a running Prefect server: PREFECT_API_URL selects it; start a local one with
    `prefect server start --host 127.0.0.1`.
    """
    prefect.serve(build_deployment(cron, root, target))
