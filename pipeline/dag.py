"""The stage DAG of dvc.yaml as `dvc repro` sees it, and running DVC as a subprocess."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dvc.stage import Stage

PROJECT_FILE = "dvc.yaml"
TAIL_LINES = 40


class StageFailedError(RuntimeError):
    """A DVC command (for one stage, when `stage` is set) exited with a non-zero code."""

    def __init__(
        self, stage: str | None, returncode: int, output: str, command: Sequence[str] = ()
    ) -> None:
        self.stage = stage
        self.returncode = returncode
        self.output = output
        what = f"stage '{stage}'" if stage else f"command `{shlex.join(command)}`"
        tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
        super().__init__(f"{what} failed (exit code {returncode}); last lines of output:\n{tail}")


def _address(stage: Stage) -> str:
    """How `dvc repro` run from the repo root names `stage` (DVC's own `addressing` is
    relative to the process cwd, which need not be the root)."""
    rel = PurePath(stage.path_in_repo).as_posix()
    name = getattr(stage, "name", None)
    if not name:  # a .dvc file
        return rel
    return name if rel == PROJECT_FILE else f"{rel}:{name}"


def stages_in_order(root: Path, target: str | None = None) -> list[str]:
    """Stage names of `root`/dvc.yaml in the order `dvc repro [target]` runs them.

    DVC itself parses the file, so `${...}` templating from params.yaml and the
    deps -> outs links are resolved exactly as for `dvc repro`. With `target`, only that
    stage and its upstream are returned.
    """
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    root = Path(root).resolve()
    # Absolute target: DVC resolves targets against the process cwd, not the repo root.
    project = str(root / PROJECT_FILE)
    spec = f"{project}:{target}" if target else project
    with Repo(str(root)) as repo, warnings.catch_warnings():
        # pygtrie deprecation noise from inside DVC's graph building, not actionable here.
        warnings.filterwarnings("ignore", message="_NoneStep", category=DeprecationWarning)
        stages = collect_stages(repo, [spec])
        # Same planning as `dvc repro`: frozen stages cut their upstream edges.
        graph = get_active_graph(repo.index.graph)
        planned = plan_repro(graph, stages)
        _check_params(planned)
        return [_address(stage) for stage in planned]


def _check_params(stages: Sequence[Stage]) -> None:
    """A DvcException naming the stage and the params it depends on that its params file
    lacks: DVC says so only when it reaches the stage, after the flow (and a Prefect server)
    started."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException

    for stage in stages:
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                try:
                    dep.get_hash()  # reads the file and raises for a key it lacks
                except DvcException as exc:
                    raise DvcException(f"stage '{_address(stage)}': {exc}") from exc


def reproduce_command(stage: str) -> list[str]:
    """`dvc repro` for one stage only; DVC skips it when its deps, params and outs are unchanged."""
    return [sys.executable, "-m", "dvc", "repro", "--single-item", stage]


def _subprocess_env() -> dict[str, str]:
    """The current environment with this interpreter's bin folder first on PATH, so the
    `python -m stages.x` commands of dvc.yaml run in this venv."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def run_dvc(args: Sequence[str], cwd: Path, stage: str | None = None) -> str:
    """Run a DVC command line `args` in `cwd` and return its combined output.

    Raises StageFailedError naming `stage` (or the command) with the exit code and the
    tail of the output when the command fails.
    """
    proc = subprocess.run(
        list(args),
        cwd=str(cwd),
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StageFailedError(stage, proc.returncode, proc.stdout, command=args)
    return proc.stdout
