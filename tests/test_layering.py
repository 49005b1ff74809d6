"""Imports run one way, pipeline -> stages -> mudjack, and dvc.yaml knows the shared stage modules.

Read from the source with `ast` (every import, lazy ones inside functions included), so a
module that is never imported by the tests is checked too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The orchestration layers and tools the core must stay independent of.
CORE_BANNED = ("pipeline", "stages", "prefect", "dvc", "great_expectations")
SHARED_STAGE_MODULES = ("stages.artifacts", "stages.expectations")


def imported_modules(source: str) -> set[str]:
    """Every absolute module name `source` imports (relative imports stay inside the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def banned_imports(folder: str, banned: tuple[str, ...]) -> list[str]:
    """`file: module` for each import under `folder` of a banned top-level package."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in sorted(imported_modules(path.read_text())):
            if name.split(".")[0] in banned:
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def test_imported_modules_sees_lazy_and_from_imports() -> None:
    source = ("import dvc.repo\nfrom pipeline.flow import repair\nfrom . import sibling\n"
              "def f():\n    import great_expectations as gx\n")
    assert imported_modules(source) == {"dvc.repo", "pipeline.flow", "pipeline.flow.repair",
                                        "great_expectations"}


def test_core_imports_no_orchestration() -> None:
    assert banned_imports("mudjack", CORE_BANNED) == []


def test_stages_do_not_import_the_pipeline() -> None:
    assert banned_imports("stages", ("pipeline",)) == []


def stage_modules() -> dict[str, tuple[Path, list[str]]]:
    """dvc.yaml stages run as `python -m stages.NAME`: (their module file, their deps)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {}
    for name, stage in stages.items():
        module = stage["cmd"].removeprefix("python -m ")
        modules[name] = (ROOT / (module.replace(".", "/") + ".py"), stage.get("deps", []))
    return modules


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_dvc_yaml_lists_the_shared_stage_modules_a_stage_imports(stage: str) -> None:
    """A stage importing stages/artifacts.py (or the GX suites) reruns when that file changes."""
    path, deps = stage_modules()[stage]
    used = imported_modules(path.read_text()) & set(SHARED_STAGE_MODULES)
    missing = [m for m in sorted(used) if m.replace(".", "/") + ".py" not in deps]
    assert missing == [], f"dvc.yaml stage {stage!r} does not list {missing} in its deps"
