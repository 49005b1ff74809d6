"""The `mudjack` command line on hostile settings: a broken params.yaml or inbox for `submit`,
method and budget lists that run nothing or an unreadable earlier table for `compare`, and a
webhook that is not a URL for `serve` and `run`. Each stops in one line on stderr, before
anything is written or run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.notify import WEBHOOK_ENV

runner = CliRunner()


def _one_error_line(result, *words: str) -> str:
    """The run failed with exit 1 (no traceback) and one `error:` line naming `words`."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and all(word in line for word in words), line
    return line


def _report(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "r9.png")
    (folder / "r9.json").write_text(json.dumps({"id": "r9", "task": "digits", "label": 3,
                                                "input": "r9.png"}))
    return folder / "r9.json"


@pytest.mark.parametrize(("params", "words"), [
    ("[1, 2]\n", ["expected a mapping"]),
    ("paths: {inbox: [\n", ["params.yaml"]),
    ("paths: [1]\n", ["paths must be a mapping"]),
    ("paths:\n  inbox: 5\n", ["paths.inbox must be a folder name"]),
])
def test_submit_refuses_a_broken_params_yaml_in_one_line(tiny_repo: Path, tmp_path: Path,
                                                        params: str, words: list[str]) -> None:
    """ParamsError, AttributeError and TypeError tracebacks came out of `inbox_folder`."""
    (tiny_repo / "params.yaml").write_text(params)
    result = runner.invoke(app, ["submit", str(_report(tmp_path / "mail")), "--root", str(tiny_repo)],
                           terminal_width=300)
    _one_error_line(result, *words)


@pytest.mark.parametrize("inbox", ["ABSOLUTE", "../outside", "link"])
def test_submit_refuses_an_inbox_outside_the_project(tiny_repo: Path, tmp_path: Path,
                                                     inbox: str) -> None:
    """`paths.inbox: /elsewhere`, `../elsewhere` or a link leaving the project wrote the
    report and its input outside it, and said `accepted`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tiny_repo / "link").symlink_to(outside)
    inbox = str(outside) if inbox == "ABSOLUTE" else inbox
    (tiny_repo / "params.yaml").write_text(f"paths:\n  inbox: {inbox}\n")
    result = runner.invoke(app, ["submit", str(_report(tmp_path / "mail")), "--root", str(tiny_repo)],
                           terminal_width=300)
    _one_error_line(result, "paths.inbox", "outside the project")
    assert list(outside.iterdir()) == []


def _compare_project(root: Path) -> Path:
    """A one-task project with scenario `toy` and an earlier table of it."""
    (root / "scenarios").mkdir(parents=True)
    (root / "scenarios" / "toy.yaml").write_text("description: toy\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("prepare: {}\npatch: {method: mudjacking}\n")
    table = root / "reports" / "compare" / "toy.csv"
    table.parent.mkdir(parents=True)
    table.write_text("earlier table\n")
    return table


@pytest.mark.parametrize(("options", "words"), [
    (["--methods", ""], ["--methods"]),
    (["--methods", " , "], ["--methods"]),
    (["--budgets", ""], ["--budgets"]),
    (["--methods", "finetune", "--budgets", "all"], ["nothing to compare", "finetune"]),
    (["--keep"], ["toy.csv", "no task, method, budget column"]),
])
def test_compare_refuses_before_running_or_writing(tmp_path: Path, monkeypatch, options: list[str],
                                                   words: list[str]) -> None:
    """An empty method or budget list replaced the earlier table with an empty one; with
    --keep, an earlier table without its key columns gave a KeyError after every run."""
    import pipeline.compare

    table = _compare_project(tmp_path)
    runs = []
    monkeypatch.setattr(pipeline.compare, "run_method", lambda *args, **kw: runs.append(args) or [])
    result = runner.invoke(app, ["compare", "--scenario", "toy", "--root", str(tmp_path), *options],
                           terminal_width=300)
    _one_error_line(result, *words)
    assert runs == [] and table.read_text() == "earlier table\n"
    assert sorted(p.name for p in table.parent.iterdir()) == ["toy.csv"]


@pytest.mark.parametrize(("webhook", "env"), [
    ("not a url", None), ("http://[::1", None), ("ftp://host/hook", None), ("http:///hook", None),
    ("", "not a url"),
])
def test_serve_refuses_a_webhook_that_is_not_a_url(tiny_repo: Path, monkeypatch, webhook: str,
                                                   env: str | None) -> None:
    """A ValueError from urllib inside the run's state hook meant no notice was ever sent."""
    import pipeline.flow

    if env is not None:
        monkeypatch.setenv(WEBHOOK_ENV, env)
    calls = []
    monkeypatch.setattr(pipeline.flow, "serve", lambda *args, **kw: calls.append((args, kw)))
    result = runner.invoke(app, ["serve", "--root", str(tiny_repo), "--webhook", webhook],
                           terminal_width=300)
    _one_error_line(result, "--webhook" if webhook else f"${WEBHOOK_ENV}", "is not a webhook URL")
    assert calls == []


def test_run_refuses_a_webhook_environment_that_is_not_a_url(tiny_repo: Path, monkeypatch) -> None:
    import pipeline.flow

    monkeypatch.setenv(WEBHOOK_ENV, "http://[::1")
    calls = []
    monkeypatch.setattr(pipeline.flow, "repair", lambda **kw: calls.append(kw))
    result = runner.invoke(app, ["run", "--root", str(tiny_repo)], terminal_width=300)
    _one_error_line(result, f"${WEBHOOK_ENV}", "Invalid IPv6 URL")
    assert calls == []
