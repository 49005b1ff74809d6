"""`mudjack compare`: run one scenario with several patch methods; one table, one plot.

Each defence is applied once to the shared encoder (one `dvc repro` of the scenario's
workspace per method and budget), and the retrain stage retrains every task's head on the
result: one row per method x budget x task. A method with a `tasks` budget (FT, SFT) runs
twice: on the reporting task's labels only, and on the labels of every task. Each row records
the clean data its method used, and the backdoor sequela of the run (reports/sequela.json):
membership inference before/after on that task, and, on the task the backdoor is re-injected
into, the BadEncoder steps it took on the repaired and on the clean encoder. The markdown ends
with which method has the lowest ASR and which the highest clean accuracy on every task, and
says so plainly where that is a baseline rather than Mudjacking.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from mudjack.io import atomic_path, read_json
from mudjack.patching import PATCH_METHODS
from mudjack.safepath import one_line
from pipeline.dag import run_dvc
from pipeline.markdown import csv_text, csv_value, md_text
from pipeline.scenarios import method_settings, prepare_workspace, scenario_params
from stages import artifacts

METRICS = ("clean_acc", "asr", "tba", "flip_asr", "anti_flip")
SEQUELA = ["mi_auc_before", "mi_auc_after", "mi_advantage_before", "mi_advantage_after",
           "reinject_steps_repaired", "reinject_steps_clean"]
METRIC_COLUMNS = [f"{m}_{when}" for m in METRICS for when in ("before", "after")]
TEXT = ("scenario", "task", "method", "budget", "clean_data")
KEYS = ("task", "method", "budget")  # what merging and the verdicts need of an earlier row
COLUMNS = [*TEXT, *METRIC_COLUMNS, *SEQUELA, "patch_seconds", "wall_seconds", "clean_samples", "bugs"]
BUDGETS = ("reporting", "all")  # a `tasks` budget: the reporting task's labels, every task's
OURS = "mudjacking"             # methods whose name starts with it are the repair, not a baseline


class CompareError(ValueError):
    """A compare that cannot run or write its table; the message says why."""


def budgets(method: str, *, tasks: int = 2, only: tuple[str, ...] = BUDGETS) -> list[str | None]:
    """The label budgets a method is compared in: both for FT/SFT (one where the scenario has
    a single task: every task's labels are the reporting task's), none for the others; of
    those, the ones in `only`."""
    fields = PATCH_METHODS[method][0].model_fields if method in PATCH_METHODS else {}
    if "tasks" not in fields:
        return [None]
    return [b for b in (BUDGETS if tasks > 1 else BUDGETS[:1]) if b in only]


def task_count(root: Path, scenario: str) -> int:
    """The downstream tasks a scenario deploys: its task plus `prepare.more_tasks`."""
    return 1 + len(scenario_params(root, scenario)["prepare"].get("more_tasks") or [])


def clean_data(patch: dict[str, Any]) -> str:
    """The clean data a patch used, in words, from reports/patch.json."""
    if patch.get("labelled"):
        tasks = patch.get("tasks") or [patch.get("task")]
        return f"{patch.get('clean_samples')} labelled ({', '.join(map(str, tasks))})"
    return f"{patch.get('clean_samples')} unlabelled + {patch.get('bugs')} reports"


def sequela_columns(sequela: dict[str, Any] | None, task: str) -> dict[str, Any]:
    """The sequela columns of a task's row (None where not measured)."""
    row: dict[str, Any] = dict.fromkeys(SEQUELA)
    if not sequela:
        return row
    mi = sequela.get("membership", {}).get(task, {})
    for when, variant in (("before", "backdoored"), ("after", "patched")):
        row[f"mi_auc_{when}"] = mi.get(variant, {}).get("auc")
        row[f"mi_advantage_{when}"] = mi.get(variant, {}).get("advantage")
    reinjection = sequela.get("reinjection") or {}
    if reinjection.get("task") == task:
        for start in ("repaired", "clean"):
            row[f"reinject_steps_{start}"] = _steps(reinjection.get(start))
    return row


def _steps(result: dict[str, Any] | None) -> int | str | None:
    """Steps to re-inject; `>cap` when the cap passed first."""
    if result is None:
        return None
    return result["steps"] if result["reached"] else f">{result['max_steps']}"


def method_rows(scenario: str, method: str, budget: str | None, runs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task of one run: `runs` holds its metrics, patch and sequela JSONs and wall time."""
    patch, rows = runs["patch"], []
    for task, result in runs["metrics"]["tasks"].items():
        row = {"scenario": scenario, "task": task, "method": method, "budget": budget or "-",
               "clean_data": clean_data(patch), "patch_seconds": patch["seconds"],
               "wall_seconds": runs["wall"], "clean_samples": patch.get("clean_samples"),
               "bugs": patch.get("bugs"), **sequela_columns(runs.get("sequela"), task)}
        for metric in METRICS:
            row[f"{metric}_before"] = result["backdoored"].get(metric)
            row[f"{metric}_after"] = result["patched"].get(metric)
        rows.append(row)
    return rows


def variant_settings(root: Path, scenario: str, method: str, budget: str | None) -> dict[str, Any]:
    """The scenario's `patch` section for `method`, with its label budget when it has one."""
    overrides = method_settings(root, scenario, method)
    if budget is not None:
        overrides["patch"]["tasks"] = budget
    return overrides


def run_method(root: Path, scenario: str, method: str, budget: str | None = None, *,
               sequela: bool = True) -> list[dict[str, Any]]:
    """Reproduce the scenario's workspace with `method` (in `budget`) as the patch; one row per
    task. Without `sequela`, only the stages up to the report run and its columns stay empty
    (its re-injection runs BadEncoder twice per method: most of a compare's time)."""
    workspace = prepare_workspace(root, scenario, variant_settings(root, scenario, method, budget))
    start = time.perf_counter()
    run_dvc([sys.executable, "-m", "dvc", "repro", *([] if sequela else ["report"])], cwd=workspace)
    sequela_file = workspace / artifacts.SEQUELA
    runs = {"metrics": read_json(workspace / artifacts.METRICS),
            "patch": read_json(workspace / artifacts.PATCH_SUMMARY),
            "sequela": read_json(sequela_file) if sequela and sequela_file.is_file() else None,
            "wall": round(time.perf_counter() - start, 1)}
    return method_rows(scenario, method, budget, runs)


def label(row: dict[str, Any]) -> str:
    return row["method"] if row.get("budget") in (None, "-") else f"{row['method']} ({row['budget']} labels)"


def _best(rows: list[dict[str, Any]], key: str, lowest: bool) -> list[dict[str, Any]]:
    """The rows with the best value of `key` (ties all kept); [] when none has one."""
    valued = [r for r in rows if isinstance(r.get(key), int | float)]
    if not valued:
        return []
    best = (min if lowest else max)(r[key] for r in valued)
    return [r for r in valued if r[key] == best]


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per task, who has the lowest ASR and the highest clean accuracy after the repair, and
    whether a baseline beats Mudjacking there."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine, name = [r for r in rows if r["task"] == task], md_text(task)
        for key, lowest, what in (("asr_after", True, "the lowest ASR"),
                                  ("clean_acc_after", False, "the highest clean accuracy")):
            best = _best(mine, key, lowest)
            if not best:
                continue
            names = " = ".join(label(r) for r in best)
            ours = [r for r in mine if r["method"].startswith(OURS) and isinstance(r.get(key), int | float)]
            if any(r["method"].startswith(OURS) for r in best) or not ours:
                lines.append(f"- {name}: {names} has {what} ({best[0][key]:.4f}).")
            else:
                lines.append(f"- {name}: **a baseline wins**: {names} has {what} ({best[0][key]:.4f}; "
                             f"{label(ours[0])}: {ours[0][key]:.4f}).")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else md_text(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join([*lines, "", "Best per task (after the repair):", *verdicts(rows)]) + "\n"


def _parse(text: str) -> Any:
    """A CSV cell back as what `to_csv` wrote: None, int, float or text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier compare's CSV ([] when there is none); a table this module could
    not have written is a CompareError naming it."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if missing := [c for c in KEYS if c not in (reader.fieldnames or [])]:
                raise ValueError(f"no {', '.join(missing)} column")
            rows = [_read_row(row, reader.line_num) for row in reader]
    except (csv.Error, ValueError) as err:  # ValueError: not UTF-8 too
        raise CompareError(f"earlier table {one_line(path)}: {one_line(err)}") from None
    return rows


def _read_row(row: dict[str | None, Any], line: int) -> dict[str, Any]:
    """A CSV row with its cells typed: text, or in a metric column a number or None."""
    if None in row or None in row.values():  # csv.DictReader's marks of an extra or missing cell
        raise ValueError(f"line {line} does not have as many cells as the header")
    typed = {key: csv_value(value) if key in TEXT else _parse(value) for key, value in row.items()
             if key in COLUMNS}
    if bad := [c for c in METRIC_COLUMNS if isinstance(typed.get(c), str)]:
        raise ValueError(f"line {line}: {bad[0]} {typed[bad[0]]!r} is not a number")
    return typed


def merge_rows(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`kept` without the (method, budget) runs that `new` redid, then `new`."""
    redone = {(r["method"], r["budget"]) for r in new}
    return [r for r in kept if (r["method"], r["budget"]) not in redone] + new


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: clean accuracy and ASR before/after, per method (and budget) and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{label(r)}\n{r['task']}" for r in rows]
    series = [("clean_acc_before", "clean acc (backdoored)"), ("clean_acc_after", "clean acc (patched)"),
              ("asr_before", "ASR (backdoored)"), ("asr_after", "ASR (patched)")]
    fig, ax = plt.subplots(figsize=(2.2 * len(rows) + 2, 3.5))
    width = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        heights = [r.get(key) or 0.0 for r in rows]  # an unmeasured ASR draws no bar
        ax.bar([x + i * width for x in range(len(rows))], heights, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], labels)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plan(root: Path, scenario: str, methods: list[str], *,
         only: tuple[str, ...] = BUDGETS) -> list[tuple[str, str | None]]:
    """The (method, budget) runs of a compare; none is a CompareError."""
    tasks = task_count(root, scenario)
    runs = [(method, budget) for method in methods for budget in budgets(method, tasks=tasks, only=only)]
    if not runs:
        raise CompareError(f"nothing to compare: methods {', '.join(methods) or '(none)'} in budgets "
                           f"{', '.join(only) or '(none)'} give no run ({tasks} task(s) in {scenario})")
    return runs


def compare(root: Path, scenario: str, methods: list[str], *, sequela: bool = True,
            only: tuple[str, ...] = BUDGETS, keep: bool = False) -> Path:
    """Run every method (FT/SFT in the budgets in `only`), then write
    reports/compare/<scenario>.csv, .md and .png; with `keep`, the rows of the scenario's
    earlier table that this call did not redo stay in it. No run, or an earlier table that
    cannot be read, stops it before anything runs."""
    runs = plan(root, scenario, methods, only=only)
    out = root / artifacts.COMPARE_DIR
    kept = read_rows(out / f"{scenario}.csv") if keep else []
    rows = merge_rows(kept, [row for method, budget in runs
                             for row in run_method(root, scenario, method, budget, sequela=sequela)])
    for suffix, text in ((".csv", to_csv(rows)), (".md", to_markdown(rows))):
        with atomic_path(out / f"{scenario}{suffix}") as tmp:
            tmp.write_text(text)
    plot(rows, out / f"{scenario}.png", f"{scenario}: clean accuracy and ASR")
    return out / f"{scenario}.md"
