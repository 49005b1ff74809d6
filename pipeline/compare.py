"""`mudjack compare`: run one scenario with several patch methods; one table, one plot."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from mudjack.io import atomic_path, read_json
from pipeline.dag import run_dvc
from pipeline.scenarios import method_settings, prepare_workspace
from stages import artifacts

METRICS = ("clean_acc", "asr", "tba", "flip_asr")
COLUMNS = ["scenario", "task", "method",
           *[f"{m}_{when}" for m in METRICS for when in ("before", "after")],
           "patch_seconds", "wall_seconds", "clean_samples", "bugs"]


def run_method(root: Path, scenario: str, method: str) -> list[dict[str, Any]]:
    """Reproduce the scenario's workspace with `method` as the patch; one row per task."""
    workspace = prepare_workspace(root, scenario, method_settings(root, scenario, method))
    start = time.perf_counter()
    run_dvc([sys.executable, "-m", "dvc", "repro"], cwd=workspace)
    wall = time.perf_counter() - start
    metrics = read_json(workspace / artifacts.METRICS)
    patch = read_json(workspace / artifacts.PATCH_SUMMARY)
    rows = []
    for task, result in metrics["tasks"].items():
        row = {"scenario": scenario, "task": task, "method": method,
               "patch_seconds": patch["seconds"], "wall_seconds": round(wall, 1),
               "clean_samples": patch.get("clean_samples"), "bugs": patch.get("bugs")}
        for metric in METRICS:
            row[f"{metric}_before"] = result["backdoored"].get(metric)
            row[f"{metric}_after"] = result["patched"].get(metric)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: clean accuracy and ASR before/after, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\n{r['task']}" for r in rows]
    series = [("clean_acc_before", "clean acc (backdoored)"), ("clean_acc_after", "clean acc (patched)"),
              ("asr_before", "ASR (backdoored)"), ("asr_after", "ASR (patched)")]
    fig, ax = plt.subplots(figsize=(2.2 * len(rows) + 2, 3.5))
    width = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        ax.bar([x + i * width for x in range(len(rows))], [r[key] for r in rows], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], labels)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def compare(root: Path, scenario: str, methods: list[str]) -> Path:
    """Run every method, then write reports/compare/<scenario>.csv, .md and .png."""
    rows = [row for method in methods for row in run_method(root, scenario, method)]
    out = root / artifacts.COMPARE_DIR
    for suffix, text in ((".csv", to_csv(rows)), (".md", to_markdown(rows))):
        with atomic_path(out / f"{scenario}{suffix}") as tmp:
            tmp.write_text(text)
    plot(rows, out / f"{scenario}.png", f"{scenario}: clean accuracy and ASR")
    return out / f"{scenario}.md"
