"""Stage progress bars: drawn on a terminal, silent when the output is not one (CI, logs)."""

from __future__ import annotations

import io

from rich.console import Console

from stages.progress import progress


def run_steps(console: Console) -> str:
    with progress("retrain", 2, console=console) as step:
        step("digits backdoored")
        step("digits patched")
    return console.file.getvalue()


def test_terminal_draws_a_bar() -> None:
    out = run_steps(Console(file=io.StringIO(), force_terminal=True, width=100))
    assert "retrain" in out and "2/2" in out


def test_no_terminal_stays_quiet() -> None:
    assert run_steps(Console(file=io.StringIO(), force_terminal=False)) == ""
