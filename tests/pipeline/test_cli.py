"""The `mudjack` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "serve", "stages", "status"):
        assert command in result.output


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("run", ["--target", "--root", "--retries"]),
        ("serve", ["--cron", "PREFECT_API_URL"]),
        ("stages", ["--target", "upstream"]),
        ("status", ["dvc status"]),
    ],
)
def test_command_help(command: str, words: list[str]) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0
    for word in words:
        assert word in result.output


def test_help_does_not_import_prefect() -> None:
    code = "import sys, pipeline.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stages_prints_order(tiny_repo: Path) -> None:
    result = runner.invoke(app, ["stages", "--root", str(tiny_repo)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["a", "b", "c"]
    result = runner.invoke(app, ["stages", "--root", str(tiny_repo), "--target", "b"])
    assert result.output.split() == ["a", "b"]


def test_stages_finds_root_from_a_subfolder(tiny_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_repo / "src")
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["a", "b", "c"]


def test_no_dvc_yaml_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stages", "--root", str(tmp_path)])
    assert result.exit_code == 2


def test_invalid_dvc_yaml_is_reported_without_traceback(repo_factory) -> None:
    root = repo_factory("stages:\n  a:\n    cmd: echo\n    outs: {bad: 1}\n")
    result = runner.invoke(app, ["stages", "--root", str(root)], terminal_width=200)
    assert result.exit_code == 1
    assert "error: " in result.output and "dvc.yaml" in result.output
    assert "Traceback" not in result.output


def test_status_shows_changed_stages(tiny_repo: Path) -> None:
    result = runner.invoke(app, ["status", "--root", str(tiny_repo)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "a:" in result.output and "changed" in result.output


def test_run_prints_metrics_table(prefect_server: None, tiny_repo: Path) -> None:
    result = runner.invoke(
        app, ["run", "--root", str(tiny_repo), "--target", "c"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "c: ran" in result.output
    assert "digits" in result.output and "0.9500 -> 0.0100" in result.output


def test_serve_passes_cron_and_root(tiny_repo: Path, monkeypatch) -> None:
    import pipeline.flow

    calls = []
    monkeypatch.setattr(pipeline.flow, "serve", lambda *args: calls.append(args))
    result = runner.invoke(app, ["serve", "--cron", "0 3 * * *", "--root", str(tiny_repo)])
    assert result.exit_code == 0, result.output
    assert calls == [("0 3 * * *", str(tiny_repo.resolve()), "report")]
