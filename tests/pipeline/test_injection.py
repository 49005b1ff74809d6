"""Names that inputs control (a task folder may be named `=1+1 |<img src=x onerror=alert(1)>[v2]`)
reach the compare table, the gates' markdown and the CLI's rich tables as text: no formula,
no HTML, no split cell, no markup eaten."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.cli import gates_table, metrics_table
from pipeline.compare import method_rows, read_rows, to_csv, to_markdown
from pipeline.gates import GateResult, gates_markdown

HOSTILE = "=1+1 |<img src=x onerror=alert(1)>[v2]"
RUN = {"metrics": {"tasks": {HOSTILE: {"backdoored": {"clean_acc": 0.9, "asr": 1.0},
                                       "patched": {"clean_acc": 0.89, "asr": 0.02}}}},
       "patch": {"seconds": 2.0, "bugs": 1, "method": "mudjacking"}, "sequela": {}, "wall": 5.0}


def unescaped_pipes(line: str) -> int:
    return line.count("|") - line.count("\\|")


def test_a_hostile_task_name_is_text_in_the_compare_table(tmp_path: Path) -> None:
    rows = method_rows("s", "mudjacking", None, RUN)
    text = to_csv(rows)
    assert f",'{HOSTILE}," in text  # a spreadsheet reads a leading ' as text, not a formula
    (tmp_path / "s.csv").write_text(text)
    assert read_rows(tmp_path / "s.csv")[0]["task"] == HOSTILE  # --keep reads it back as it was
    table, *_ = to_markdown(rows).split("\n\n")
    header, _, row = table.splitlines()
    assert unescaped_pipes(row) == unescaped_pipes(header) and "<img" not in to_markdown(rows)


def test_a_hostile_subject_is_text_in_the_gates_markdown() -> None:
    lines = gates_markdown([GateResult("max_patched_asr", HOSTILE, 0.02, 0.1, True, note="a|b")]).splitlines()
    assert unescaped_pipes(lines[-1]) == unescaped_pipes(lines[2]) and "<img" not in lines[-1]


def test_rich_tables_print_a_hostile_name_as_it_is() -> None:
    """rich read `[v2]` as markup and dropped it (`[/]` in a name crashed the table)."""
    console = Console(width=400, record=True)
    console.print(metrics_table([{"task": HOSTILE + "[/]", "clean_acc_before": 0.9, "clean_acc_after": 0.9,
                                  "asr_before": 1.0, "asr_after": 0.0, "tba_before": 0.0, "tba_after": 1.0}]))
    console.print(gates_table([{"gate": "g", "subject": HOSTILE, "value": 0.1, "limit": 1.0,
                                "passed": True, "note": "[v3]"}]))
    text = console.export_text()
    assert text.count("[v2]") == 2 and "[/]" in text and "[v3]" in text
