"""Imports run one way, pipeline -> stages -> mudjack (dvc.yaml's code deps: tests/pipeline/test_dvc_deps.py).

Read from the source with `ast` (every import, lazy ones inside functions included), so a
module that is never imported by the tests is checked too.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.imports import imported_names

ROOT = Path(__file__).resolve().parents[1]
# The orchestration layers and tools the core must stay independent of.
CORE_BANNED = ("pipeline", "stages", "prefect", "dvc", "great_expectations")


def banned_imports(folder: str, banned: tuple[str, ...]) -> list[str]:
    """`file: module` for each import under `folder` of a banned top-level package."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in sorted(imported_names(path.read_text())):
            if name.split(".")[0] in banned:
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def test_imported_names_sees_lazy_from_and_relative_imports() -> None:
    source = ("import dvc.repo\nfrom pipeline.flow import repair\nfrom . import sibling\n"
              "def f():\n    import great_expectations as gx\n")
    assert imported_names(source, package="stages") == {
        "dvc.repo", "pipeline.flow", "pipeline.flow.repair", "great_expectations",
        "stages", "stages.sibling"}


def test_core_imports_no_orchestration() -> None:
    assert banned_imports("mudjack", CORE_BANNED) == []


def test_stages_do_not_import_the_pipeline() -> None:
    assert banned_imports("stages", ("pipeline",)) == []

