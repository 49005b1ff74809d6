"""`mudjack`: run, schedule and inspect the repair pipeline of dvc.yaml.

Prefect is imported inside the commands that need it, so `mudjack --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.env import configure_environment, project_root

app = typer.Typer(
    name="mudjack",
    help="Repair a backdoored foundation model: run the dvc.yaml stages as a Prefect flow.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Project folder holding dvc.yaml (default: nearest one up from the current folder).",
        file_okay=False,
        show_default=False,
    ),
]
TargetOption = Annotated[
    str,
    typer.Option("--target", "-t", help="Last stage to bring up to date (with its upstream)."),
]


def _root(root: Path | None) -> Path:
    """The project root, with the quiet/local environment defaults applied."""
    try:
        path = project_root(root)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="--root") from exc
    configure_environment(path)
    return path


def _fail(exc: Exception) -> typer.Exit:
    """Print a DVC or stage error (with its cause, where DVC keeps the detail) for exit 1."""
    message = str(exc)
    if exc.__cause__ is not None:
        message += f"\n{exc.__cause__}"
    console.print(
        f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(1)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of `pipeline.flow.metrics_rows` output."""
    table = Table(title="Repair metrics (before -> after)")
    table.add_column("task")
    for metric in ("clean_acc", "asr", "tba"):
        table.add_column(metric, justify="right")
    for row in rows:
        cells = [
            f"{_fmt(row[f'{m}_before'])} -> {_fmt(row[f'{m}_after'])}"
            for m in ("clean_acc", "asr", "tba")
        ]
        table.add_row(str(row["task"]), *cells)
    return table


@app.command()
def run(
    target: TargetOption = "report",
    root: RootOption = None,
    retries: Annotated[
        int, typer.Option(help="Retries of a stage after a transient failure (e.g. DVC lock).")
    ] = 1,
) -> None:
    """Run the repair flow: every stage up to TARGET, skipping those DVC finds up to date.

    Without PREFECT_API_URL, Prefect starts a temporary local server for the run.
    """
    path = _root(root)
    from dvc.exceptions import DvcException

    from pipeline.dag import StageFailedError
    from pipeline.flow import metrics_rows, repair

    try:
        summary = repair(root=str(path), target=target, retries=retries)
    except (StageFailedError, DvcException) as exc:
        raise _fail(exc) from exc
    ran = set(summary["ran"])
    for stage in summary["stages"]:
        console.print(f"{stage}: {'ran' if stage in ran else 'up to date'}")
    if summary["metrics"]:
        console.print(metrics_table(metrics_rows(summary["metrics"])))
    else:
        console.print("No reports/metrics.json yet.")


@app.command()
def serve(
    cron: Annotated[
        str, typer.Option(help="Cron schedule of the runs, e.g. '0 * * * *' for hourly.")
    ] = "0 * * * *",
    target: TargetOption = "report",
    root: RootOption = None,
) -> None:
    """Serve the repair flow on a cron schedule (blocks until Ctrl-C).

    Needs a Prefect server: PREFECT_API_URL selects it. Start a local one with
    `prefect server start --host 127.0.0.1` and export
    PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    path = _root(root)
    from pipeline.flow import serve as serve_flow

    serve_flow(cron, str(path), target)


@app.command()
def stages(
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Only this stage and its upstream [default: all]."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Print the stages of dvc.yaml in the order they run (DVC's dependency order)."""
    path = _root(root)
    from dvc.exceptions import DvcException

    from pipeline.dag import stages_in_order

    try:
        names = stages_in_order(path, target)
    except DvcException as exc:
        raise _fail(exc) from exc
    for name in names:
        typer.echo(name)


@app.command()
def status(root: RootOption = None) -> None:
    """Show `dvc status`: which stages have changed dependencies, params or outputs."""
    path = _root(root)
    from pipeline.dag import StageFailedError, run_dvc

    try:
        output = run_dvc([sys.executable, "-m", "dvc", "status"], cwd=path)
    except StageFailedError as exc:
        raise _fail(exc) from exc
    console.print(output.rstrip(), markup=False, highlight=False)


if __name__ == "__main__":
    app()
