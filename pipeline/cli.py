"""`mudjack`: run, schedule, inspect and promote the repair pipeline of dvc.yaml.

Commands: run, compare, serve, server (a local Prefect API), submit (a bug report to the
inbox), status, promote, rollback, stages.
Prefect, DVC and GTO are imported inside the commands that need them, so `mudjack --help`
stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mudjack.config import ParamsError
from pipeline.env import configure_environment, project_root
from stages.artifacts import METRICS, QUARANTINE

app = typer.Typer(
    name="mudjack",
    help="Repair a backdoored foundation model: run the dvc.yaml stages as a Prefect flow.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
)
console = Console()
err_console = Console(stderr=True)

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
ScenarioOption = Annotated[
    str | None,
    typer.Option("--scenario", help="Run a named scenario (scenarios/NAME.yaml) in runs/NAME/.",
                 show_default=False),
]
RemoteOption = Annotated[
    str,
    typer.Option(
        "--remote",
        help="DVC remote to push promoted runs to: a folder or a URL (s3://, gs://, azure://). "
        "Default: $MUDJACK_REMOTE, else the repo's default DVC remote, else ../mudjack-remote.",
        show_default=False,
    ),
]
WebhookOption = Annotated[
    str,
    typer.Option(
        "--webhook",
        help="URL that receives a JSON POST when a run fails or completes "
        "(default: $MUDJACK_WEBHOOK_URL).",
        show_default=False,
    ),
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
    """Print a DVC or stage error (with its cause, where DVC keeps the detail) on stderr for
    exit 1."""
    message = str(exc)
    if exc.__cause__ is not None:
        message += f"\n{exc.__cause__}"
    err_console.print(
        f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(1)


def _stage_order(path: Path, target: str | None, *, to_run: bool = True) -> list[str]:
    """The stages `dvc repro [target]` runs; an unknown target fails here in one line."""
    from dvc.exceptions import DvcException

    from pipeline.dag import stages_in_order

    try:
        return stages_in_order(path, target, to_run=to_run)
    except (DvcException, OSError) as exc:  # OSError: a .dvc/config that is a folder, say
        raise _fail(exc) from exc


SIGTERM_EXIT = 128 + signal.SIGTERM  # the exit status of a process ended by SIGTERM
GATES_FAILED_EXIT = 3  # `run` finished, but a promotion gate fails (1 is an error)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(SIGTERM_EXIT)


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (`docker stop`, systemd, kill) into SystemExit for the block.

    Python's default for SIGTERM ends the process at once: no `finally`, no atexit, so the
    stage's DVC process group and Prefect's temporary server would run on as orphans.
    Unwinding lets `run_dvc` end the group and Prefect stop its server."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_cron(cron: str) -> None:
    """Refuse a cron expression Prefect's schedule would reject (a pydantic traceback from
    inside the deployment otherwise)."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as exc:
        raise _fail(ValueError(f"--cron {cron!r} is not a cron expression: five fields, minute "
                               "hour day month weekday (e.g. '0 * * * *')")) from exc


def _check_webhook(webhook: str) -> None:
    """Refuse a webhook (--webhook, else $MUDJACK_WEBHOOK_URL) that is not an http(s) URL with a
    host: the run's state hook would send no notice."""
    from pipeline.notify import WEBHOOK_ENV, url_problem

    where, url = ("--webhook", webhook) if webhook else (f"${WEBHOOK_ENV}", os.environ.get(WEBHOOK_ENV, ""))
    if url and (problem := url_problem(url)):
        raise _fail(ValueError(f"{where} {url!r} is not a webhook URL: {problem}"))


def _promotable(path: Path, *, promote: bool) -> None:
    """With promotion asked for, refuse a project outside git now, not after the whole run."""
    from pipeline.promote import PromotionError, require_git

    try:
        if promote:
            require_git(path)
    except PromotionError as exc:
        raise _fail(exc) from exc


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def gates_table(records: list[dict[str, Any]]) -> Table:
    """A rich table of the promotion gates (pipeline.gates records)."""
    table = Table(title="Promotion gates (params.yaml `gates:`)")
    for column in ("gate", "subject", "value", "limit", "result", "note"):
        table.add_column(column, justify="right" if column in ("value", "limit") else "left")
    for r in records:
        value = "missing" if r["value"] is None else f"{r['value']:.4g}"
        table.add_row(r["gate"], Text(r["subject"]), value, f"{r['limit']:g}",  # Text: no markup
                      "pass" if r["passed"] else "[bold red]FAIL[/]", Text(r.get("note", "")))
    return table


def metrics_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of `pipeline.flow.metrics_rows` output."""
    table = Table(title="Repair metrics (before -> after)")
    table.add_column("task")
    for metric in ("clean_acc", "asr", "tba"):
        table.add_column(metric, justify="right", no_wrap=True)  # "before -> after" stays one line
    table.add_column("asr from trigger")  # the task's worst trigger (mudjack.exposure)
    table.add_column("exposed")
    for row in rows:
        cells = [
            f"{_fmt(row[f'{m}_before'])} -> {_fmt(row[f'{m}_after'])}"
            for m in ("clean_acc", "asr", "tba")
        ]
        table.add_row(Text(str(row["task"])), *cells, _fmt(row.get("trigger")), _fmt(row.get("exposed")))
    return table


@app.command()
def run(
    target: TargetOption = "report",
    root: RootOption = None,
    retries: Annotated[
        int, typer.Option(help="Retries of a stage after a transient failure (e.g. DVC lock).")
    ] = 1,
    promote: Annotated[
        bool, typer.Option(help="Promote the run when every gate passes (as `serve` does).")
    ] = False,
    remote: RemoteOption = "",
    scenario: ScenarioOption = None,
) -> None:
    """Run the repair flow: every stage up to TARGET, skipping those DVC finds up to date.

    Then check the promotion gates of params.yaml; with --promote, push, commit and put the
    run in prod when they pass. Exit status: 0 when every gate passes (or there are no metrics
    yet), 3 when a gate fails, 1 on an error (a failed gate under --promote is one). Without
    PREFECT_API_URL, Prefect starts a temporary local server for the run. With --scenario
    NAME, the run happens in the scenario's own DVC workspace runs/NAME/ (scenarios/NAME.yaml
    merged over params.yaml).
    """
    path = _root(root)
    if scenario is not None:  # "" is refused as an unknown name, not run as no scenario
        from pipeline.scenarios import check_scenario, prepare_workspace

        try:
            check_scenario(path, scenario)  # `seed: abc` stops here, not after a Prefect server starts
            path = prepare_workspace(path, scenario)
        except (FileNotFoundError, ParamsError) as exc:
            raise _fail(exc) from exc
    _promotable(path, promote=promote)
    _check_webhook("")  # the run's state hook posts to $MUDJACK_WEBHOOK_URL
    _stage_order(path, target)  # an unknown target stops here, before a Prefect server starts
    from dvc.exceptions import DvcException

    from pipeline.dag import StageFailedError
    from pipeline.flow import GatesFailedError, repair
    from pipeline.promote import PromotionError

    try:
        with exit_on_sigterm():
            summary = repair(root=str(path), target=target, retries=retries, promote=promote,
                             remote=remote)
    except (StageFailedError, DvcException, GatesFailedError, PromotionError) as exc:
        raise _fail(exc) from exc
    print_summary(summary)
    if summary["metrics"] and not summary["gates_passed"]:  # a script or scheduler must see it
        err_console.print(f"gates fail: not fit to promote (exit {GATES_FAILED_EXIT})", style="bold red",
                          markup=False, highlight=False)
        raise typer.Exit(GATES_FAILED_EXIT)


def print_summary(summary: dict[str, Any]) -> None:
    """What a flow run did: the stages, metrics, gates and promotion."""
    from pipeline.flow import metrics_rows

    ran = set(summary["ran"])
    for stage in summary["stages"]:
        console.print(f"{stage}: {'ran' if stage in ran else 'up to date'}")
    if not summary["metrics"]:
        console.print("No reports/metrics.json yet.")
        return
    console.print(metrics_table(metrics_rows(summary["metrics"])))
    console.print(gates_table(summary["gates"]))
    if summary.get("report"):
        console.print(f"Run report: {summary['report']}", markup=False, highlight=False)
    if summary.get("promotion"):
        done = summary["promotion"]
        console.print(f"Promoted {done['version']} ({done['commit'][:8]}); data in {done['remote']}",
                      markup=False, highlight=False)


def _names(text: str, *, option: str) -> list[str]:
    """The comma-separated names of `option`; none is refused (a run of nothing would replace
    the earlier table with an empty one)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise _fail(ValueError(f"{option} {text!r} names nothing: give a comma-separated list"))
    return names


@app.command()
def compare(
    scenario: Annotated[str, typer.Option(help="Scenario name (scenarios/NAME.yaml).")],
    methods: Annotated[
        str, typer.Option(help="Comma-separated patch methods to run on the same inputs.")
    ] = "mudjacking,finetune,super_finetune",
    root: RootOption = None,
    sequela: Annotated[
        bool, typer.Option(help="Also measure backdoor sequela (membership inference, re-injection).")
    ] = True,
    budgets: Annotated[
        str, typer.Option(help="Comma-separated label budgets FT/SFT run in: reporting, all.")
    ] = "reporting,all",
    keep: Annotated[
        bool, typer.Option(help="Keep the rows of this scenario's earlier table that this run "
                                "does not redo (same method and budget are replaced).")
    ] = False,
) -> None:
    """Run one scenario with several patch methods (FT/SFT in two label budgets: the
    reporting task's, every task's) and write one table, a row per method x budget x task:
    reports/compare/SCENARIO.csv and .md (clean data used, clean_acc, asr, tba before and
    after, membership inference and re-injection steps, seconds; per task, which method
    wins) and a bar plot .png. Each method's settings come from the scenario's `methods:`
    entry; DVC reruns only the stages a method changes."""
    from dvc.exceptions import DvcException

    from pipeline.compare import BUDGETS, CompareError
    from pipeline.compare import compare as run_compare
    from pipeline.dag import StageFailedError

    path = _root(root)
    only = tuple(_names(budgets, option="--budgets"))
    if unknown := sorted(set(only) - set(BUDGETS)):
        raise _fail(ValueError(f"unknown budget(s) {', '.join(unknown)}: use {', '.join(BUDGETS)}"))
    try:
        table = run_compare(path, scenario, _names(methods, option="--methods"), sequela=sequela,
                            only=only, keep=keep)
    except (StageFailedError, DvcException, FileNotFoundError, ParamsError, CompareError) as exc:
        raise _fail(exc) from exc
    console.print(table.read_text(), markup=False, highlight=False)  # task names are data
    console.print(f"written: {table.with_suffix('.csv')}, {table}, {table.with_suffix('.png')}")


@app.command()
def serve(
    cron: Annotated[
        str, typer.Option(help="Cron schedule of the runs, e.g. '0 * * * *' for hourly.")
    ] = "0 * * * *",
    root: RootOption = None,
    remote: RemoteOption = "",
    webhook: WebhookOption = "",
    promote: Annotated[
        bool, typer.Option(help="Promote each run whose gates pass (push, commit, GTO prod).")
    ] = True,
) -> None:
    """Serve the repair flow on a cron schedule (blocks until Ctrl-C).

    Each run picks up new reports from the inbox (DVC reruns validate and what follows), runs
    the pipeline, checks the gates of params.yaml and, when all pass, pushes to the DVC remote,
    commits dvc.lock + metrics and registers the model with GTO in stage prod. A failing gate
    promotes nothing and fails the run; failures are logged, published as a Prefect artifact
    and POSTed to the webhook. Needs a Prefect server: PREFECT_API_URL selects it. Start a local
    one with `mudjack server` and export PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    path = _root(root)
    _check_cron(cron)
    _check_webhook(webhook)
    _promotable(path, promote=promote)
    from pipeline.flow import serve as serve_flow

    serve_flow(cron, str(path), promote=promote, remote=remote, webhook_url=webhook)


@app.command()
def server(
    port: Annotated[int, typer.Option(help="Port of the Prefect API and UI.")] = 4200,
    ui: Annotated[bool, typer.Option(help="Serve the Prefect UI as well as the API.")] = True,
    root: RootOption = None,
) -> None:
    """Start a local Prefect server on 127.0.0.1 (blocks), its database under .prefect/.

    Then, in another shell: export PREFECT_API_URL=http://127.0.0.1:PORT/api and
    `mudjack serve`. The same as `prefect server start --host 127.0.0.1 --port PORT`.
    """
    _root(root)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port), "--ui" if ui else "--no-ui"]
    console.print(f"export PREFECT_API_URL=http://127.0.0.1:{port}/api", markup=False)
    sys.stdout.flush()
    os.execv(sys.executable, command)  # the server replaces this process: signals reach it


# Text, checked by `submit` itself (mudjack.safepath): click's Path refuses a NUL with a usage
# error instead of the report's rejection code.
ReportArgument = Annotated[
    str, typer.Argument(help="A report JSON: {id, task, label, input} next to its input.")
]


@app.command()
def submit(report: ReportArgument, root: RootOption = None) -> None:
    """Check a bug REPORT and copy it, with its input file, into the inbox of params.yaml.

    Prints `accepted` (the next run picks it up) or `rejected: <reason>` (exit 1). The full
    checks (Great Expectations, reproduction) run in the validate and intake stages.
    """
    path = _root(root)
    from mudjack.reports import ReportError, printable, read_report
    from mudjack.safepath import check_name, one_line
    from pipeline.inbox import InboxError, add_to_inbox, inbox_folder, stage_writing

    report_file = Path(report)
    try:
        check_name(report, what="report path")
        parsed = read_report(report_file)
        inbox = inbox_folder(path)
        writer = stage_writing(path, inbox)
        if writer:
            raise InboxError(f"the inbox {inbox} is an output of stage {writer!r}, which would "
                              "overwrite the report; set paths.inbox to a folder of your own")
        copied = add_to_inbox(report_file, parsed, inbox)
    except ParamsError as exc:  # the project's params.yaml, not the report, is at fault
        raise _fail(exc) from exc
    except (ReportError, InboxError, OSError) as exc:
        code = getattr(exc, "code", "refused")
        console.print(f"rejected: {printable(report_file.name)} [{code}]: {one_line(exc)}",
                      style="bold red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(f"accepted: {printable(parsed.id)} -> {printable(copied)}", markup=False,
                  highlight=False, soft_wrap=True)


# The old name of `submit`, kept for one release: it read as if it ran the intake stage.
@app.command("intake", hidden=True)
def intake_alias(report: ReportArgument, root: RootOption = None) -> None:
    """Deprecated: use `mudjack submit`."""
    typer.echo("warning: `mudjack intake` is deprecated and will be removed in the next release; "
               "use `mudjack submit`", err=True)
    submit(report, root)


@app.command()
def stages(
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Only this stage and its upstream [default: all]."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Print the stages of dvc.yaml in the order they run (DVC's dependency order)."""
    for name in _stage_order(_root(root), target, to_run=False):
        typer.echo(name)


@app.command()
def status(root: RootOption = None) -> None:
    """Show `dvc status` (which stages have changed dependencies, params or outputs), the
    promotion gates on the current metrics, and the registered versions with the one in prod."""
    path = _root(root)
    from pipeline.dag import StageFailedError, busy_message, run_dvc
    from pipeline.gates import as_records, check_project
    from pipeline.inbox import quarantine_inbox
    from pipeline.promote import PromotionError

    _stage_order(path, None, to_run=False)  # a damaged DVC project in one line, not `dvc status`'s traceback
    quarantine_inbox(path, path / QUARANTINE)  # `dvc status` hashes the inbox: no FIFO there
    try:
        output = run_dvc([sys.executable, "-m", "dvc", "status"], cwd=path)
    except StageFailedError as exc:
        busy = busy_message(exc.output)
        raise _fail(RuntimeError(busy) if busy else exc) from exc
    console.print(output.rstrip(), markup=False, highlight=False)
    if (path / METRICS).is_file():
        try:
            console.print(gates_table(as_records(check_project(path))))
        except ValueError as exc:  # a damaged metrics.json (ArtifactError), a bad gates: section
            raise _fail(exc) from exc
    try:
        print_versions(path)
    except PromotionError as exc:  # not a git repository: no version registry
        raise _fail(exc) from exc


def print_versions(path: Path) -> None:
    from pipeline.promote import ARTIFACT, versions

    rows = versions(path)
    if not rows:
        console.print(f"No version of {ARTIFACT} registered yet.")
        return
    for row in rows:
        stages = f" [{', '.join(row['stages'])}]" if row["stages"] else ""
        console.print(f"{ARTIFACT}@{row['version']} {row['commit'][:8]}{stages}",
                      markup=False, highlight=False)


@app.command()
def promote(
    version: Annotated[
        str | None,
        typer.Option(help="Put this registered version (e.g. v2.0.0) in prod instead.",
                     show_default=False),
    ] = None,
    remote: RemoteOption = "",
    root: RootOption = None,
) -> None:
    """Promote the current run: check the gates on reports/metrics.json, then push to the DVC
    remote, commit dvc.lock + metrics and register the commit with GTO in stage prod.

    With --version, put that registered version in prod (no gates: it passed them when it was
    registered).
    """
    path = _root(root)
    from dvc.exceptions import DvcException

    from pipeline.dag import StageFailedError
    from pipeline.gates import all_passed, as_records, check_project
    from pipeline.promote import ARTIFACT, PromotionError, promote_run, set_prod

    try:
        if version:
            set_prod(path, version)
            console.print(f"prod: {ARTIFACT}@{version}", markup=False, highlight=False)
            return
        results = check_project(path)
        console.print(gates_table(as_records(results)))
        if not all_passed(results):
            console.print("Gates failed: nothing promoted.", style="bold red")
            raise typer.Exit(1)
        from pipeline.flow import read_metrics

        done = promote_run(path, read_metrics(path) or {}, remote)
    except (PromotionError, StageFailedError, DvcException, ValueError) as exc:
        raise _fail(exc) from exc
    console.print(done.describe(), markup=False, highlight=False)


@app.command()
def rollback(root: RootOption = None) -> None:
    """Put the previous version back in prod: the one registered before the current prod one
    (GTO stage assignment).

    The data of every version stays in the DVC remote: `dvc pull` at its tag brings it back.
    """
    path = _root(root)
    from pipeline.promote import ARTIFACT, PromotionError, prod_version
    from pipeline.promote import rollback as roll_back

    try:
        current = prod_version(path)
        target = roll_back(path)
    except PromotionError as exc:
        raise _fail(exc) from exc
    console.print(f"prod: {ARTIFACT}@{target} (was {current})", markup=False, highlight=False)


if __name__ == "__main__":
    app()
