"""The stage DAG of dvc.yaml as `dvc repro` sees it, and running DVC as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
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
# DVC's messages when another DVC process holds the repo lock, or a stage's files (rwlock).
LOCKED = "Unable to acquire lock"
BUSY = "is busy, it is being blocked by"
STOP_GRACE_SECONDS = 5.0  # from SIGTERM to SIGKILL when a run is stopped


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


def busy_message(output: str) -> str | None:
    """One line for DVC's refusal to run while another DVC process holds the repo lock or a
    stage's rwlock (five lines and a link otherwise); None for any other failure."""
    if LOCKED not in output and BUSY not in output:
        return None
    holder = re.search(r"\(PID (\d+)\)", output)
    pid = f" (PID {holder[1]})" if holder else ""
    return f"DVC is busy: another run holds the lock{pid}; try again when it ends"


def stage_address(stage: Stage) -> str:
    """How `dvc repro` run from the repo root names `stage` (DVC's own `addressing` is
    relative to the process cwd, which need not be the root)."""
    rel = PurePath(stage.path_in_repo).as_posix()
    name = getattr(stage, "name", None)
    if not name:  # a .dvc file
        return rel
    return name if rel == PROJECT_FILE else f"{rel}:{name}"


def stages_in_order(root: Path, target: str | None = None, *, to_run: bool = True) -> list[str]:
    """Stage names of `root`/dvc.yaml in the order `dvc repro [target]` runs them.

    DVC itself parses the file, so `${...}` templating from params.yaml and the
    deps -> outs links are resolved exactly as for `dvc repro`. With `target`, only that
    stage and its upstream are returned. `to_run`: the plan is about to run, so a stage that
    would overwrite the data a repair starts from stops it (`pipeline.user_data`).
    """
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    from pipeline.user_data import check_inputs_kept

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
        if to_run:
            check_inputs_kept(root, planned)
        return [stage_address(stage) for stage in planned]


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
                    raise DvcException(f"stage '{stage_address(stage)}': {exc}") from exc


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
    tail of the output when the command fails. DVC runs in a process group of its own, ended
    whole when this process is stopped while waiting (see `run_group`).
    """
    returncode, output = run_group(args, cwd=cwd, env=_subprocess_env())
    if returncode != 0:
        raise StageFailedError(stage, returncode, output, command=args)
    return output


def run_group(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> tuple[int, str]:
    """Run `args` in a new session (its own process group); (exit code, stdout + stderr).

    Any exception while waiting (KeyboardInterrupt, the SystemExit of `mudjack run`'s SIGTERM
    handler, Prefect's TerminationSignal) ends the whole group before it propagates:
    `subprocess.run` kills only DVC, and the stage command DVC started would run on as an
    orphan, writing outputs after DVC's lock is gone.
    """
    proc = subprocess.Popen(
        list(args), cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    with proc:
        try:
            output, _ = proc.communicate()
        except BaseException:
            stop_group(proc, grace=grace)
            raise
    return proc.returncode, output


def stop_group(proc: subprocess.Popen, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM `proc`'s process group, then SIGKILL what is left of it after `grace` seconds.

    The SIGKILL goes to the group even when `proc` itself ended in time: a stage command
    that ignores SIGTERM would outlive DVC."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=grace)  # drains the pipe: DVC cannot block writing to it
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended
        os.killpg(pgid, signum)
