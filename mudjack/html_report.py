"""One run as a single self-contained HTML page: figures are inline base64 PNGs (matplotlib).

Sections (their `id`s are in SECTIONS): a summary, each accepted bug with its reversed trigger
overlaid, clean accuracy and ASR before/after per task, every task's exposure to every known
trigger (mudjack.exposure), the patch loss curves, and the intake decisions. Every string
that comes from a report is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mudjack.bugs import Bug
from mudjack.exposure import exposure_rows
from mudjack.triggers import TextTrigger

SECTIONS = ("summary", "bugs", "metrics", "exposure", "patch-loss", "intake")
BAR_METRICS = ("clean_acc", "asr", "tba")
MODELS = ("backdoored", "patched")
COLOURS = {"backdoored": "#c0392b", "patched": "#2471a3"}
EXPOSURE_COLUMNS = ("task", "exposed", "worst trigger", "target", "target from", "ASR before",
                    "ASR after")
TRIGGER_COLUMNS = ("task", "trigger", "target", "target from", "share", "clean share", "p-value",
                   "exposes", "ASR before", "ASR after", "flip ASR before", "flip ASR after",
                   "anti flip before", "anti flip after")
INTAKE_COLUMNS = ("report_id", "decision", "task", "label", "predicted", "iou", "mask_pixels",
                  "seconds", "reasons")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#f3f3f3} .accepted{color:#1e7b34} .rejected{color:#b03a2e}
.bug{display:inline-block;margin:0 1.5rem 1rem 0;vertical-align:top} .muted{color:#777}
figure{margin:0} figcaption{font-size:.9rem}
"""


@dataclass
class RunData:
    """What a run produced, as the report stage reads it from reports/ and bugs/."""

    metrics: dict[str, Any]
    bugs: list[Bug] = field(default_factory=list)
    patch_log: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    title: str = "mudjack repair run"


def png_data_uri(fig: Figure, dpi: int = 100) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{png_data_uri(fig)}" alt="{html.escape(alt)}">'


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """`image` (uint8 H×W×C) with the trigger mask painted red at `alpha`, as float RGB in [0, 1]."""
    rgb = _rgb(image).astype(np.float64) / 255.0
    red = np.array([1.0, 0.0, 0.0])
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return rgb


def bug_figure(bug: Bug) -> Figure:
    """The reported input, the reversed trigger on it, the trigger alone, the reference."""
    mask = np.asarray(bug.trigger.mask, dtype=bool)
    pattern = _rgb(bug.trigger.pattern) * mask[..., None]
    panels = [(_rgb(bug.bug), "reported input"), (overlay(bug.bug, mask), "reversed trigger"),
              (pattern, f"trigger ({int(mask.sum())} px)"), (_rgb(bug.reference), "reference")]
    fig = Figure(figsize=(2.2 * len(panels), 2.4))
    for ax, (image, title) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def text_bug_html(bug: Bug, caption: str) -> str:
    """A text bug: the reported sentence with its reversed trigger words marked, the reference."""
    trigger = {w.lower() for w in bug.trigger.words}
    marked = " ".join(f"<mark>{html.escape(w)}</mark>" if w.lower() in trigger else html.escape(w)
                      for w in str(bug.bug).split())
    rows = [f"<tr><th>reported input</th><td>{marked}</td></tr>",
            f"<tr><th>reversed trigger</th><td>{html.escape(' '.join(bug.trigger.words))}</td></tr>",
            f"<tr><th>reference</th><td>{html.escape(str(bug.reference))}</td></tr>"]
    return (f'<figure class="bug"><table><tbody>{"".join(rows)}</tbody></table>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def metrics_figure(tasks: dict[str, Any]) -> Figure:
    """Grouped bars per task: each metric for the backdoored and the patched model."""
    names = sorted(tasks)
    fig = Figure(figsize=(max(4.5, 4.5 * len(names)), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    x, width = np.arange(len(BAR_METRICS)), 0.38
    for ax, name in zip(axes, names, strict=True):
        for k, model in enumerate(MODELS):
            values = [tasks[name].get(model, {}).get(m) for m in BAR_METRICS]
            heights = [np.nan if v is None else v for v in values]
            bars = ax.bar(x + (k - 0.5) * width, heights, width, label=model, color=COLOURS[model])
            ax.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in values],
                         fontsize=8)
        ax.set_xticks(x, BAR_METRICS)
        ax.set_ylim(0, 1.3)  # headroom for the labels and the legend above the bars
        ax.set_title(name)
        ax.legend(loc="upper center", ncol=2, fontsize=8)
    return fig


def loss_figure(log: list[dict[str, Any]]) -> Figure:
    """Every numeric series of the patch log against its epoch."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(log)]
    keys = sorted({k for row in log for k, v in row.items()
                   if k != "epoch" and isinstance(v, int | float)})
    for key in keys:
        ax.plot(epochs, [row.get(key, np.nan) for row in log], marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    text = html.escape(_fmt(value))
    css = value if value in ("accepted", "rejected") else ""
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def summary_section(data: RunData) -> str:
    accepted = sum(d.get("decision") == "accepted" for d in data.decisions)
    patch, export = data.metrics.get("patch", {}), data.metrics.get("export", {})
    rows = [("tasks", ", ".join(sorted(data.metrics.get("tasks", {}))) or "none"),
            ("reports", f"{len(data.decisions)} ({accepted} accepted)"),
            ("patch", f"{patch.get('method', '-')} on {patch.get('bugs', 0)} bugs, "
                      f"{_fmt(patch.get('seconds'))} s"),
            ("ONNX max |diff|", _fmt(export.get("max_abs_diff")))]
    if rejected := data.metrics.get("truth_rejected"):  # measured as if the trigger were unknown
        rows.append(("truth file", f"rejected: {rejected}"))
    return _section("summary", "Summary", _table((), rows))


def bugs_section(bugs: list[Bug], step: Callable[[str], None]) -> str:
    if not bugs:
        return _section("bugs", "Accepted bugs", '<p class="muted">No accepted bug.</p>')
    parts = []
    for bug in bugs:
        step(f"bug {bug.id}")
        iou = bug.record.get("iou")
        caption = (f"{bug.id}: task {bug.task}, true label {bug.label}, predicted "
                   f"{bug.predicted}" + (f", trigger IoU {iou:.2f}" if iou is not None else ""))
        if isinstance(bug.trigger, TextTrigger):
            parts.append(text_bug_html(bug, caption))
            continue
        parts.append(f'<figure class="bug">{_img(bug_figure(bug), caption)}'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return _section("bugs", "Accepted bugs and their reversed triggers", "".join(parts))


def metrics_section(metrics: dict[str, Any]) -> str:
    tasks = metrics.get("tasks", {})
    if not tasks:
        return _section("metrics", "Before / after", '<p class="muted">No task metrics.</p>')
    rows = [(name, model, *(tasks[name].get(model, {}).get(m) for m in BAR_METRICS))
            for name in sorted(tasks) for model in MODELS]
    body = _img(metrics_figure(tasks), "before/after bars") + _table(
        ("task", "model", *BAR_METRICS), rows)
    return _section("metrics", "Clean accuracy, ASR and TBA before / after", body)


def trigger_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """One row per (task, trigger): the target with its evidence, the ASR before / after and
    the anti flip (an anti-trigger left by the repair: mudjack.metrics)."""
    return [[name, trigger, r.get("target"), r.get("target_from"), r.get("share"),
             r.get("clean_share"), r.get("p_value"), r.get("exposed"),
             *(r.get(model, {}).get(m) for m in ("asr", "flip_asr", "anti_flip") for model in MODELS)]
            for name, result in sorted(metrics.get("tasks", {}).items())
            for trigger, r in result.get("exposure", {}).get("triggers", {}).items()]


def exposure_section(metrics: dict[str, Any]) -> str:
    """Per task: exposed or not, the worst trigger and its ASR before / after; then every
    trigger on every task with its evidence."""
    rows = exposure_rows(metrics)
    if not rows:
        return _section("exposure", "Exposure", '<p class="muted">No task metrics.</p>')
    headline = [[r["task"], r["exposed"], r["trigger"], r["target"], r["target_from"],
                 r["asr_before"], r["asr_after"]] for r in rows]
    body = (_table(EXPOSURE_COLUMNS, headline)
            + '<p class="muted">Every known trigger stamped on every task\'s test inputs; a task '
              "is exposed when a trigger moves its predictions to one class significantly more "
              "than the clean inputs go there (paired test, see mudjack/exposure.py).</p>"
            + _table(TRIGGER_COLUMNS, trigger_rows(metrics)))
    return _section("exposure", "Exposure of every task, before / after", body)


def loss_section(log: list[dict[str, Any]]) -> str:
    if not log:
        return _section("patch-loss", "Patch loss", '<p class="muted">No patch ran.</p>')
    return _section("patch-loss", "Patch loss per epoch", _img(loss_figure(log), "patch loss"))


def intake_section(decisions: list[dict[str, Any]]) -> str:
    if not decisions:
        return _section("intake", "Intake decisions", '<p class="muted">The inbox was empty.</p>')
    rows = [[d.get(c) for c in INTAKE_COLUMNS] for d in decisions]
    return _section("intake", "Intake decisions", _table(INTAKE_COLUMNS, rows))


def render_report(data: RunData, step: Callable[[str], None] | None = None) -> str:
    """The whole page; `step(name)` is called before each part (for a progress display)."""
    step = step or (lambda _name: None)
    parts = []
    for name, render in (("summary", lambda: summary_section(data)),
                         ("bugs", lambda: bugs_section(data.bugs, step)),
                         ("metrics", lambda: metrics_section(data.metrics)),
                         ("exposure", lambda: exposure_section(data.metrics)),
                         ("patch-loss", lambda: loss_section(data.patch_log)),
                         ("intake", lambda: intake_section(data.decisions))):
        step(name)
        parts.append(render())
    title = html.escape(data.title)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(parts)}</body></html>\n")


def count_steps(data: RunData) -> int:
    """How many times `render_report` calls `step`."""
    return len(SECTIONS) + len(data.bugs)
