"""Prefect orchestration of the dvc.yaml stages: one task per stage, DVC decides what reruns.

After the stages, the promotion gates of params.yaml are checked on reports/metrics.json and
published; with `promote=True` (the scheduled deployment) a passing run is pushed to the DVC
remote, committed and put in `prod` with GTO (pipeline.promote), and a failing one promotes
nothing and fails the run. State hooks report every run's end (pipeline.notify).

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
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.states import Completed, State

from pipeline.dag import StageFailedError, reproduce_command, run_dvc, stages_in_order
from pipeline.env import configure_environment
from pipeline.gates import GateResult, all_passed, as_records, check_project, failures, gates_markdown
from pipeline.inbox import quarantine_inbox
from pipeline.notify import report_run
from stages.artifacts import METRICS, QUARANTINE, RUN_HTML

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

FLOW_NAME = "mudjack-repair"
DEPLOYMENT_NAME = "scheduled-repair"
ARTIFACT_KEY = "repair-metrics"
GATES_KEY = "repair-gates"
REPORT_KEY = "repair-report"
LAST_STAGE = "report"
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


class GatesFailedError(RuntimeError):
    """The run's metrics fail a promotion gate: nothing is promoted."""


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
    path = Path(root) / METRICS
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per downstream task: each metric before (backdoored) and after (patched), the
    trigger the ASR comes from and whether any trigger exposes the task (mudjack.exposure)."""
    rows = []
    for name, result in sorted(metrics.get("tasks", {}).items()):
        row: dict[str, Any] = {"task": name}
        for metric in METRIC_NAMES:
            row[f"{metric}_before"] = result.get("backdoored", {}).get(metric)
            row[f"{metric}_after"] = result.get("patched", {}).get(metric)
        exposure = result.get("exposure", {})
        row["trigger"], row["exposed"] = exposure.get("trigger"), exposure.get("exposed")
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
        _logger().info("no %s: nothing to publish", METRICS)
        return None
    create_table_artifact(metrics_rows(metrics), key=ARTIFACT_KEY, description=_describe(metrics))
    return metrics


@task(name="check-gates", cache_policy=NO_CACHE)
def check_gates(root: str) -> list[dict[str, Any]]:
    """The promotion gates on metrics.json, published as the markdown artifact GATES_KEY."""
    results = check_project(Path(root))
    create_markdown_artifact(gates_markdown(results), key=GATES_KEY,
                             description="Promotion gates of params.yaml on reports/metrics.json")
    _logger().info("gates: %s", "all pass" if all_passed(results) else failures(results))
    return as_records(results)


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(root: str) -> str | None:
    """Link the run's HTML report (reports/run.html) as the artifact REPORT_KEY."""
    path = Path(root) / RUN_HTML
    if not path.is_file():
        return None
    create_link_artifact(path.as_uri(), link_text=f"Run report ({RUN_HTML})", key=REPORT_KEY,
                         description="Bugs with reversed triggers, before/after metrics, "
                                     "patch loss, intake decisions (one self-contained file)")
    return str(path)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(root: str, metrics: dict[str, Any], remote: str) -> dict[str, Any]:
    """Push to the DVC remote, commit the run's record, register it with GTO in prod."""
    from pipeline.promote import promote_run

    done = promote_run(Path(root), metrics, remote)
    _logger().info(done.describe())
    return {"version": done.version, "commit": done.commit, "remote": done.remote,
            "created": done.created}


def _outcome(summary: dict[str, Any]) -> str:
    """The final state's message: what happened to the model."""
    promoted = summary.get("promotion")
    if promoted:
        verb = "promoted" if promoted["created"] else "unchanged since"
        return f"{verb} {promoted['version']} ({promoted['commit'][:8]}), remote {promoted['remote']}"
    if not summary["metrics"]:
        return "no metrics yet; not promoted"
    return f"{'all gates pass' if summary['gates_passed'] else 'gates fail'}; not promoted"


@flow(name=FLOW_NAME, on_failure=[report_run], on_completion=[report_run])
def repair(root: str = ".", target: str = LAST_STAGE, retries: int = 1, promote: bool = False,
           remote: str = "", webhook_url: str = "") -> Any:
    """Bring `target` and its upstream stages of dvc.yaml up to date, one stage at a time.

    Each stage is a task running `dvc repro --single-item`, so up-to-date stages are skipped
    by DVC. `retries` applies only to transient failures (see `is_transient`). The gates are
    checked after the stages; `promote` promotes a passing run to `remote` (pipeline.promote)
    and fails the run when a gate fails. `webhook_url` is read by the state hooks.
    """
    if promote and target != LAST_STAGE:
        raise ValueError(f"promotion needs the whole pipeline: target must be {LAST_STAGE!r}")
    root_path = Path(root).resolve()
    configure_environment(root_path)
    quarantine_inbox(root_path, root_path / QUARANTINE)  # before DVC hashes the inbox
    stages = stages_in_order(root_path, target)
    run = reproduce_stage.with_options(retries=retries, retry_delay_seconds=RETRY_DELAY_SECONDS)
    results = [run(str(root_path), stage) for stage in stages]
    metrics = publish_metrics(str(root_path))
    gates = check_gates(str(root_path))
    summary = {"stages": stages, "ran": [r["stage"] for r in results if r["ran"]],
               "metrics": metrics, "gates": gates, "gates_passed": all(g["passed"] for g in gates),
               "report": publish_report(str(root_path)), "promotion": None}
    if promote:
        if not summary["gates_passed"]:
            failed = failures([GateResult(**g) for g in gates])
            raise GatesFailedError(f"gates failed, nothing promoted: {failed}")
        summary["promotion"] = promote_task(str(root_path), metrics, remote)
    return Completed(message=_outcome(summary), data=summary)


def build_deployment(cron: str, root: str = ".", target: str = LAST_STAGE, promote: bool = True,
                     remote: str = "", webhook_url: str = "") -> RunnerDeployment:
    """A deployment of `repair` on the `cron` schedule (a RunnerDeployment for `serve`).

    The flow is found by its module path (pipeline.flow.repair), so `serve` works from any folder.
    """
    from prefect.deployments.runner import EntrypointType

    parameters = {"root": str(Path(root).resolve()), "target": target, "promote": promote,
                  "remote": remote, "webhook_url": webhook_url}
    return repair.to_deployment(name=DEPLOYMENT_NAME, cron=cron, parameters=parameters,
                                entrypoint_type=EntrypointType.MODULE_PATH)


def serve(cron: str, root: str = ".", target: str = LAST_STAGE, **options: Any) -> None:
    """Run `repair` on the `cron` schedule until interrupted (blocks); `options` are the other
    parameters of `build_deployment` (promote, remote, webhook_url).

    Needs a running Prefect server: PREFECT_API_URL selects it; start a local one with
    `mudjack server` (`prefect server start --host 127.0.0.1`).
    """
    prefect.serve(build_deployment(cron, root, target, **options))
