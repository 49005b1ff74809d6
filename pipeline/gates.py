"""Promotion gates: does a run's reports/metrics.json meet the `gates:` of params.yaml?

`evaluate_gates` is a pure function of the metrics and the limits; each gate is checked per
task where it is per task, and a metric that is missing fails its gate (never passes by default).
The ASR gate applies to every task whose exposure was measured (mudjack.exposure): a task that
no known trigger exposes (`exposure.exposed: false`) passes it with a note saying so, as does a
task whose ASR is over the limit only through inputs the patched model misclassifies without the
trigger too (its flip ASR within the limit); clean accuracy is gated on every task, and so is
the anti flip when `max_anti_flip` is set (a repair that left the trigger an anti-trigger).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mudjack.config import read_params_yaml
from pipeline.markdown import md_text
from stages.artifacts import METRICS
from stages.config import GatesParams
from stages.summaries import SHAPES, checked


@dataclass(frozen=True)
class GateResult:
    """One gate on one subject (a task, or "export"): the measured value against its limit."""

    gate: str
    subject: str
    value: float | None
    limit: float
    passed: bool
    note: str = ""

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        verdict = "pass" if self.passed else "FAIL"
        note = f" ({self.note})" if self.note else ""
        return f"{self.gate} [{self.subject}]: {shown} (limit {self.limit:g}) {verdict}{note}"


def _check(gate: str, subject: str, value: float | None, limit: float) -> GateResult:
    return GateResult(gate, subject, value, limit, value is not None and value <= limit)


def _asr_gate(name: str, result: dict[str, Any], limit: float) -> GateResult:
    """max_patched_asr on one task; an unexposed task passes it, and so does an ASR above the
    limit made of the task's own errors (the flip ASR within it), each with the reason."""
    patched = result.get("patched", {})
    asr, flip = patched.get("asr"), patched.get("flip_asr")
    exposure = result.get("exposure", {})
    if exposure.get("exposed") is False:
        p_values = [t.get("p_value", 1.0) for t in exposure.get("triggers", {}).values()]
        return GateResult("max_patched_asr", name, asr, limit, True,
                          "unexposed: no trigger moves its predictions above chance "
                          f"(smallest p-value {min(p_values, default=1.0):.2g})")
    # ASR counts the triggered inputs the model also puts in the target without the trigger: on
    # a binary task those errors alone can exceed the limit (SST-2: a never-attacked MiniLM's
    # ASR is 0.17), so what the trigger itself does, the flip ASR, decides there
    if asr is not None and asr > limit and flip is not None and flip <= limit:
        return GateResult("max_patched_asr", name, asr, limit, True,
                          f"own errors: the trigger flips {flip:.3g} of the inputs the patched "
                          "model gets right (flip ASR); the rest it misclassifies without it")
    return _check("max_patched_asr", name, asr, limit)


def _acc_drop(result: dict[str, Any]) -> float | None:
    before = result.get("backdoored", {}).get("clean_acc")
    after = result.get("patched", {}).get("clean_acc")
    return None if before is None or after is None else before - after


def evaluate_gates(metrics: dict[str, Any], gates: GatesParams) -> list[GateResult]:
    """Every gate of `gates` on `metrics` (the reports/metrics.json contract)."""
    tasks = metrics.get("tasks", {})
    results = [_check("max_onnx_diff", "export", metrics.get("export", {}).get("max_abs_diff"),
                      gates.max_onnx_diff)]
    for name, result in sorted(tasks.items()):
        results.append(_asr_gate(name, result, gates.max_patched_asr))
        results.append(_check("max_clean_acc_drop", name, _acc_drop(result),
                              gates.max_clean_acc_drop))
        if gates.max_anti_flip is not None:
            results.append(_check("max_anti_flip", name, result.get("patched", {}).get("anti_flip"),
                                  gates.max_anti_flip))
    if not tasks:  # nothing measured cannot pass
        results.append(GateResult("tasks", "metrics", None, 1.0, False))
    return results


def all_passed(results: list[GateResult]) -> bool:
    return all(r.passed for r in results)


def failures(results: list[GateResult]) -> str:
    """The failed gates on one line, for a state message or a webhook."""
    return "; ".join(r.describe() for r in results if not r.passed)


def gates_markdown(results: list[GateResult]) -> str:
    """A markdown table of the gates (for the Prefect artifact and the failure report)."""
    verdict = "all gates pass" if all_passed(results) else "gates FAILED"
    lines = [f"**Promotion gates: {verdict}**", "",
             "| gate | subject | value | limit | result | note |", "|---|---|---|---|---|---|"]
    for r in results:
        value = "missing" if r.value is None else f"{r.value:.4g}"
        lines.append(f"| {r.gate} | {md_text(r.subject)} | {value} | {r.limit:g} | "
                     f"{'pass' if r.passed else '**FAIL**'} | {md_text(r.note)} |")
    return "\n".join(lines)


def as_records(results: list[GateResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def load_gates(params_file: Path) -> GatesParams:
    """The `gates:` section of params.yaml (only it: the gates need no other section)."""
    raw = read_params_yaml(params_file)  # bounded, alias-free: a params file is input
    try:
        return GatesParams(**(raw.get("gates") or {}))
    except ValidationError as err:
        raise ValueError(f"{params_file}: invalid gates\n{err}") from None


def check_project(root: Path) -> list[GateResult]:
    """The gates of `root`/params.yaml on `root`/reports/metrics.json (missing file: all fail); an
    ArtifactError (a ValueError) naming the metrics file when it is damaged."""
    gates = load_gates(Path(root) / "params.yaml")
    path = Path(root) / METRICS
    metrics = checked(path, SHAPES[METRICS]) if path.is_file() else {}
    return evaluate_gates(metrics, gates)
