"""Final stage: gather the stage metrics into reports/metrics.json, the before/after plot, and
the run's self-contained HTML report (reports/run.html).

Every input is read and its shape checked (stages/summaries.py) before anything is written: a
damaged summary or log is an ArtifactError naming the file and the first field that is wrong,
and the previous outputs stay as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mudjack.bugs import load_bugs
from mudjack.html_report import RunData, count_steps, render_report
from mudjack.io import ArtifactError, atomic_path, read_json_bounded, ready_outputs, write_json
from stages.artifacts import (
    BEFORE_AFTER,
    BUGS,
    EXPORT_SUMMARY,
    INTAKE_LOG,
    METRICS,
    PATCH_LOG,
    PATCH_SUMMARY,
    RETRAIN_SUMMARY,
    RUN_HTML,
)
from stages.progress import progress
from stages.summaries import SHAPES, checked

MODELS = ("backdoored", "patched")


def read_summary(path: Path) -> Any:
    """A stage summary or log, its shape checked (stages/summaries.py)."""
    return checked(path, SHAPES[path])


def gather_metrics() -> dict:
    retrain, patch, export = (read_summary(p) for p in (RETRAIN_SUMMARY, PATCH_SUMMARY, EXPORT_SUMMARY))
    # every task's numbers, with the exposure of each (mudjack.exposure): `dvc metrics show` reads them
    tasks = {name: {key: result[key] for key in (*MODELS, "per_head", "exposure") if key in result}
             for name, result in retrain["tasks"].items()}
    return {"tasks": tasks, "export": {"max_abs_diff": export["max_abs_diff"]},
            "patch": {"seconds": patch["seconds"], "method": patch["method"],
                      "bugs": patch["bugs"]},
            # a malformed truth file: measured as unknown, and why (stages/common.py)
            **{key: retrain[key] for key in ("truth_rejected",) if key in retrain}}


def plot_rows(metrics: dict) -> list[dict]:
    return [{"metric": f"{name} {metric} ({model})", "value": value}
            for name, result in metrics["tasks"].items() for model in MODELS
            for metric, value in result[model].items() if value is not None]


def intake_decisions() -> list[dict]:
    """Intake's log, one decision object a line (none without a log); an ArtifactError naming it
    when it cannot be read or a line is not a decision."""
    if not INTAKE_LOG.exists():
        return []
    decisions = read_json_bounded(INTAKE_LOG, lines=True)
    if not all(isinstance(d, dict) for d in decisions):
        raise ArtifactError(f"{INTAKE_LOG}: a line is not a JSON object (one decision a line)")
    return decisions


def read_run() -> RunData:
    """Everything the report shows, every file checked."""
    return RunData(metrics=gather_metrics(), bugs=load_bugs(BUGS),
                   patch_log=read_summary(PATCH_LOG) if PATCH_LOG.exists() else [],
                   decisions=intake_decisions())


def main() -> None:
    ready_outputs(METRICS, BEFORE_AFTER, RUN_HTML)
    data = read_run()
    with progress("report", count_steps(data)) as step:
        page = render_report(data, step)
    write_json(METRICS, data.metrics)
    write_json(BEFORE_AFTER, plot_rows(data.metrics))
    with atomic_path(RUN_HTML) as tmp:
        tmp.write_text(page)
    for name, result in data.metrics["tasks"].items():
        print(f"report: {name}: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[m].items() if v is not None)
            for m in MODELS))
    print(f"report: {RUN_HTML}")


if __name__ == "__main__":
    main()
