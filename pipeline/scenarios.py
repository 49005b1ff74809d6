"""Scenarios: named parameter sets (scenarios/<name>.yaml) run in their own DVC workspace.

A scenario's workspace `runs/<name>/` is a DVC repo of its own (`dvc init --no-scm`)
holding params.yaml (the project's, with the scenario's values merged over it) and the
project's dvc.yaml with its code dependencies pointed back at the project. Every
scenario keeps its own outputs and cache, so switching scenarios recomputes nothing
that is up to date, and `dvc repro` / `dvc exp run` work inside the workspace.
Paths inside a scenario file are relative to its workspace (the project root is `../..`).
"""

from __future__ import annotations

import copy
import reprlib
from pathlib import Path
from typing import Any

import yaml

from mudjack.config import ParamsError, read_params_yaml
from mudjack.io import atomic_path
from mudjack.safepath import one_line
from stages.config import typed_params

SCENARIOS = "scenarios"
RUNS = "runs"
CODE_DIRS = ("stages/", "mudjack/", "pipeline/")
NON_PARAM_KEYS = ("methods", "description")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in; nested mappings merge, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scenario_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / SCENARIOS).glob("*.yaml"))


def load_scenario(root: Path, name: str) -> dict[str, Any]:
    """scenarios/NAME.yaml; NAME must be one of those files' names (`../params` or an absolute
    path would name a file elsewhere, and its workspace a folder outside runs/)."""
    if name not in scenario_names(root):
        raise FileNotFoundError(f"no scenario {name!r}; known: {', '.join(scenario_names(root))}")
    return read_params_yaml(root / SCENARIOS / f"{name}.yaml")


def scenario_params(root: Path, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """params.yaml with the scenario (minus its non-parameter keys) and `overrides` merged in.

    An override naming another patch method replaces the patch section: each method
    has its own keys. A scenario's `foundation.config` replaces the default's whole: it is
    its adapter's, whose keys do not mix with another adapter's.
    """
    scenario = {k: v for k, v in load_scenario(root, name).items() if k not in NON_PARAM_KEYS}
    base = read_params_yaml(root / "params.yaml")
    for section, value in scenario.items():  # `patch: [1]` would otherwise replace the section
        if isinstance(base.get(section), dict) and not isinstance(value, dict):
            raise ParamsError(f"{_file(root, name)}: {section} must be a mapping of its settings, "
                              f"not {type(value).__name__} {reprlib.repr(value)}")
    merged = deep_merge(base, scenario)
    if "config" in scenario.get("foundation", {}):
        merged["foundation"]["config"] = scenario["foundation"]["config"]
    overrides = overrides or {}
    if overrides.get("patch", {}).get("method", merged["patch"]["method"]) != merged["patch"]["method"]:
        merged["patch"] = {}
    return deep_merge(merged, overrides)


def check_scenario(root: Path, name: str) -> None:
    """A ParamsError naming the scenario file and the key when its parameters, merged over
    params.yaml, are not the pipeline's (checked before a workspace is made or a flow starts)."""
    typed_params(scenario_params(root, name), source=_file(root, name))


def _rebase(dep: Any, prefix: str) -> Any:
    # a code folder itself ("mudjack") as well as a file in one ("stages/patch.py")
    if isinstance(dep, str) and (dep + "/").startswith(CODE_DIRS):
        return prefix + dep
    return dep


def workspace_dvc_yaml(root: Path, prefix: str = "../../") -> dict[str, Any]:
    """The project's dvc.yaml with code dependencies pointing back at the project."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():
        stage["deps"] = [_rebase(dep, prefix) for dep in stage.get("deps", [])]
    return pipeline


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return  # unchanged: keep the timestamp
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def prepare_workspace(root: Path, name: str, overrides: dict[str, Any] | None = None) -> Path:
    """Create or refresh runs/<name>/: params.yaml, dvc.yaml and a git-less DVC repo."""
    params = scenario_params(root, name, overrides)  # an unknown name fails before any folder is made
    workspace = root / RUNS / name
    workspace.mkdir(parents=True, exist_ok=True)
    _write_yaml(workspace / "params.yaml", params)
    _write_yaml(workspace / "dvc.yaml", workspace_dvc_yaml(root))
    if not (workspace / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo.init(str(workspace), no_scm=True) as repo, repo.config.edit() as config:
            config["core"]["analytics"] = False
    return workspace


def method_settings(root: Path, name: str, method: str) -> dict[str, Any]:
    """The `patch` section for `method` in scenario `name` (its `methods:` entry)."""
    methods = load_scenario(root, name).get("methods", {})
    settings = methods.get(method, {}) if isinstance(methods, dict) else methods
    if not isinstance(settings, dict):
        where = f"methods.{method}" if isinstance(methods, dict) else "methods"
        raise ParamsError(f"{_file(root, name)}: {where} must be a mapping (method: its patch "
                          f"settings), not {type(settings).__name__} {reprlib.repr(settings)}")
    return {"patch": {"method": method, **settings}}


def _file(root: Path, name: str) -> str:
    return one_line(root / SCENARIOS / f"{name}.yaml")
