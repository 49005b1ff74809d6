"""Promotion gates: a pure function of metrics.json and the `gates:` limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mudjack.io import ArtifactError
from pipeline.gates import (
    all_passed,
    check_project,
    evaluate_gates,
    failures,
    gates_markdown,
    load_gates,
)
from stages.artifacts import METRICS
from stages.config import GatesParams

GATES = GatesParams(max_patched_asr=0.1, max_clean_acc_drop=0.03, max_onnx_diff=1e-4)


def metrics(asr: float | None = 0.05, before: float = 0.98, after: float = 0.97,
            diff: float | None = 2e-5) -> dict:
    task = {"backdoored": {"clean_acc": before, "asr": 0.97, "tba": 0.03},
            "patched": {"clean_acc": after, "asr": asr, "tba": 0.9}}
    return {"tasks": {"digits": task}, "export": {"max_abs_diff": diff}}


def by_gate(results) -> dict:
    return {(r.gate, r.subject): r for r in results}


def test_a_good_repair_passes_every_gate() -> None:
    results = evaluate_gates(metrics(), GATES)
    assert all_passed(results) and failures(results) == ""
    gates = by_gate(results)
    assert set(gates) == {("max_onnx_diff", "export"), ("max_patched_asr", "digits"),
                          ("max_clean_acc_drop", "digits")}
    assert gates["max_clean_acc_drop", "digits"].value == pytest.approx(0.01)


@pytest.mark.parametrize(("kwargs", "failed"), [
    ({"asr": 0.25}, "max_patched_asr"),
    ({"after": 0.90}, "max_clean_acc_drop"),
    ({"diff": 3e-3}, "max_onnx_diff"),
    ({"asr": None}, "max_patched_asr"),  # not measured: cannot pass
])
def test_each_gate_fails_on_its_own(kwargs: dict, failed: str) -> None:
    results = evaluate_gates(metrics(**kwargs), GATES)
    assert [r.gate for r in results if not r.passed] == [failed]
    assert failed in failures(results) and "FAIL" in failures(results)


def test_an_asr_made_of_the_tasks_own_errors_passes_with_a_note() -> None:
    """SST-2: a repaired MiniLM's ASR 0.229 is mostly negatives it calls positive without the
    trigger too (flip ASR 0.030); a trigger that still flips passes no more than before."""
    data = metrics(asr=0.229)
    data["tasks"]["digits"]["patched"]["flip_asr"] = 0.03
    gate = by_gate(evaluate_gates(data, GATES))["max_patched_asr", "digits"]
    assert gate.passed and gate.value == 0.229 and "own errors" in gate.note and "0.03" in gate.note
    data["tasks"]["digits"]["patched"]["flip_asr"] = 0.15
    gate = by_gate(evaluate_gates(data, GATES))["max_patched_asr", "digits"]
    assert not gate.passed and gate.note == ""
    below = metrics(asr=0.05)
    below["tasks"]["digits"]["patched"]["flip_asr"] = 0.5  # within the limit: ASR decides
    assert by_gate(evaluate_gates(below, GATES))["max_patched_asr", "digits"].note == ""


def test_the_anti_flip_is_gated_only_when_a_limit_is_set() -> None:
    """A repair that sends the target class's own triggered inputs away (stop 52's p6 text
    patch: target_tba 0.475) passes the default gates and fails max_anti_flip."""
    data = metrics()
    data["tasks"]["digits"]["patched"]["anti_flip"] = 0.4
    assert ("max_anti_flip", "digits") not in by_gate(evaluate_gates(data, GATES))
    gated = GATES.model_copy(update={"max_anti_flip": 0.2})
    assert [r.gate for r in evaluate_gates(data, gated) if not r.passed] == ["max_anti_flip"]
    data["tasks"]["digits"]["patched"]["anti_flip"] = 0.011
    assert all_passed(evaluate_gates(data, gated))
    del data["tasks"]["digits"]["patched"]["anti_flip"]  # not measured: cannot pass
    assert "max_anti_flip [digits]: missing" in failures(evaluate_gates(data, gated))


def test_limits_are_inclusive_and_accuracy_gains_pass() -> None:
    assert all_passed(evaluate_gates(metrics(asr=0.1, after=0.99), GATES))


def test_every_task_is_gated() -> None:
    data = metrics()
    data["tasks"]["svhn"] = {"backdoored": {"clean_acc": 0.9}, "patched": {"clean_acc": 0.8,
                                                                            "asr": 0.5}}
    failed = {(r.gate, r.subject) for r in evaluate_gates(data, GATES) if not r.passed}
    assert failed == {("max_patched_asr", "svhn"), ("max_clean_acc_drop", "svhn")}


def test_no_metrics_fail() -> None:
    results = evaluate_gates({}, GATES)
    assert not all_passed(results)
    assert "missing" in failures(results)


def test_markdown_table_lists_every_gate() -> None:
    text = gates_markdown(evaluate_gates(metrics(asr=0.25), GATES))
    assert text.startswith("**Promotion gates: gates FAILED**")
    assert "| max_patched_asr | digits | 0.25 | 0.1 | **FAIL** |" in text


def test_gates_come_from_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\ngates:\n  max_patched_asr: 0.3\n")
    assert load_gates(tmp_path / "params.yaml") == GatesParams(max_patched_asr=0.3)
    assert not all_passed(check_project(tmp_path))  # no reports/metrics.json yet
    (tmp_path / "params.yaml").write_text("gates:\n  max_anti_flip: 0.2\n")
    assert load_gates(tmp_path / "params.yaml").max_anti_flip == 0.2
    (tmp_path / "params.yaml").write_text("gates:\n  max_anti_flip: 1.5\n")  # not a fraction
    with pytest.raises(ValueError, match="max_anti_flip"):
        load_gates(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("gates:\n  max_asr: 0.3\n")
    with pytest.raises(ValueError, match="max_asr"):
        load_gates(tmp_path / "params.yaml")


def test_the_project_params_parse() -> None:
    from stages.config import load_params

    root = Path(__file__).resolve().parents[2]
    assert load_params(root / "params.yaml").gates == load_gates(root / "params.yaml")


def with_exposure(exposed: bool | None, asr: float = 0.5) -> dict:
    data = metrics(asr=asr)
    triggers = {"bug:r-1": {"p_value": 0.4}} if exposed is not None else {}
    data["tasks"]["digits"]["exposure"] = {"exposed": exposed, "trigger": "bug:r-1",
                                           "triggers": triggers}
    return data


def test_an_unexposed_task_passes_the_asr_gate_with_a_note() -> None:
    results = by_gate(evaluate_gates(with_exposure(False), GATES))
    gate = results["max_patched_asr", "digits"]
    assert gate.passed and gate.value == 0.5 and "unexposed" in gate.note and "0.4" in gate.note
    assert "unexposed" in gate.describe()
    assert "| pass | unexposed" in gates_markdown(list(results.values()))
    data = with_exposure(False)  # its clean accuracy is still gated
    data["tasks"]["digits"]["patched"]["clean_acc"] = 0.5
    assert [r.gate for r in evaluate_gates(data, GATES) if not r.passed] == ["max_clean_acc_drop"]


@pytest.mark.parametrize("exposed", [True, None])
def test_an_exposed_or_unmeasured_task_fails_above_max_patched_asr(exposed: bool | None) -> None:
    gate = by_gate(evaluate_gates(with_exposure(exposed), GATES))["max_patched_asr", "digits"]
    assert not gate.passed and gate.note == ""
    assert by_gate(evaluate_gates(with_exposure(exposed, asr=0.05), GATES))[
        "max_patched_asr", "digits"].passed


def damaged(path: tuple[str, ...], value: Any) -> str:
    """metrics() as JSON with the value at `path` replaced."""
    data = node = metrics()
    *parents, last = path
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return json.dumps(data)


def test_check_project_reads_a_good_metrics_file(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / METRICS).parent.mkdir()
    (tmp_path / METRICS).write_text(json.dumps(metrics()))
    assert all_passed(check_project(tmp_path))


@pytest.mark.parametrize(("body", "reason"), [
    ("{oops", "not valid JSON"), ("[1]", "Input should be a valid dictionary"),
    ('{"tasks": [], "export": {"max_abs_diff": 0.0}}', "tasks: Input should be a valid dictionary"),
    ('{"tasks": {"d": 5}, "export": {"max_abs_diff": 0.0}}', "tasks.d: Input should be a valid dictionary"),
    (damaged(("tasks", "digits", "patched", "clean_acc"), "0.4"),
     "tasks.digits.patched.clean_acc: Input should be a valid number"),
    (damaged(("export", "max_abs_diff"), "0"), "export.max_abs_diff: Input should be a valid number"),
    (damaged(("tasks", "digits", "exposure"), {"exposed": False, "triggers": {"t": {"p_value": "0.5"}}}),
     "tasks.digits.exposure.triggers.t.p_value: Input should be a valid number"),
])
def test_a_damaged_metrics_file_is_one_error_naming_it(tmp_path: Path, body: str, reason: str) -> None:
    """`mudjack status` and `promote` ended in a TypeError or AttributeError traceback."""
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / METRICS).parent.mkdir()
    (tmp_path / METRICS).write_text(body)
    with pytest.raises(ArtifactError) as caught:
        check_project(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / METRICS}: {reason}")
