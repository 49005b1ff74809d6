"""dvc.yaml lists every project module a stage's command imports, so `dvc repro` never reuses a
result computed by other code.

The imports are read from the code (ast, transitively, lazy imports inside functions too);
a module is covered when it, or a folder above it, is one of the stage's `deps`. Package
`__init__.py` files that hold no code (a docstring at most) change nothing and are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers.imports import module_file, project_imports

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _holds_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return bool(body)


def uncovered(stage: dict, root: Path = ROOT) -> list[str]:
    """Project files the stage's command imports that none of its deps covers."""
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [Path(d if isinstance(d, str) else next(iter(d))) for d in stage.get("deps", [])]
    deps = [d for d in deps if "${" not in str(d)]
    missing = []
    for path in project_imports(module, root).values():
        relative = path.relative_to(root)
        if path.name == "__init__.py" and not _holds_code(path):
            continue
        if not any(relative == dep or dep in relative.parents for dep in deps):
            missing.append(str(relative))
    return sorted(missing)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_its_imports(name: str) -> None:
    missing = uncovered(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r} imports modules its deps do not list: {missing}"


def test_every_stage_runs_a_project_module() -> None:
    for name, stage in STAGES.items():
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        assert module_file(module, ROOT) is not None, f"stage {name!r} runs {module!r}: not in the project"


def test_check_finds_a_missing_dependency(tmp_path: Path) -> None:
    """The rule itself: a module imported two levels down, and a lazy import, are both caught."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "mudjack").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text('"""Stages."""\n')
    (tmp_path / "mudjack" / "__init__.py").write_text("")
    (tmp_path / "stages" / "work.py").write_text("from mudjack.a import f\n")
    (tmp_path / "mudjack" / "a.py").write_text("from . import b\n\ndef f():\n    import mudjack.c\n")
    (tmp_path / "mudjack" / "b.py").write_text("X = 1\n")
    (tmp_path / "mudjack" / "c.py").write_text("Y = 2\n")
    stage = {"cmd": "python -m stages.work", "deps": ["stages/work.py", "mudjack/a.py"]}
    assert uncovered(stage, tmp_path) == ["mudjack/b.py", "mudjack/c.py"]
    assert uncovered({**stage, "deps": ["stages", "mudjack"]}, tmp_path) == []
