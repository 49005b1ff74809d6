"""What Python modules import, read from the source with `ast` (lazy imports inside functions
included), so a module the tests never import is checked too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("mudjack", "stages", "pipeline")  # the project's own top-level packages


def imported_names(source: str, *, package: str = "") -> set[str]:
    """Dotted names `source` imports; `from m import x` gives m and m.x (x may be a submodule).
    Relative imports resolve against `package` (the importing module's package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str, root: Path) -> Path | None:
    """The file of a project module (`a.b` -> a/b.py or a/b/__init__.py), or None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def project_imports(module: str, root: Path) -> dict[str, Path]:
    """Every project module `module` imports, directly or not (itself and parent packages included)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PACKAGES:
            continue
        path = module_file(name, root)
        if path is None:  # a name imported from a module, not a module
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(parent for parent in _with_parents(name) if parent not in seen)
        todo.extend(imported_names(path.read_text(), package=package))
    return seen
