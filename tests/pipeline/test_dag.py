"""The stage order comes from DVC itself, and `dvc repro` skips what is up to date."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.dag import StageFailedError, reproduce_command, run_dvc, stages_in_order

REPRO = [sys.executable, "-m", "dvc", "repro"]


def test_order_is_topological(tiny_repo: Path) -> None:
    # dvc.yaml lists c, b, a: the order comes from deps -> outs links.
    assert stages_in_order(tiny_repo) == ["a", "b", "c"]


def test_target_restricts_to_upstream(tiny_repo: Path) -> None:
    assert stages_in_order(tiny_repo, "b") == ["a", "b"]
    assert stages_in_order(tiny_repo, "a") == ["a"]


def test_templated_dep_links_stages(repo_factory) -> None:
    # `${paths.x}` resolves to src/x.txt, the output of make_x, so make_x runs before a.
    root = repo_factory(
        """\
stages:
  a:
    cmd: python step.py a ${paths.x} a.txt
    deps: ["${paths.x}"]
    outs: [a.txt]
  make_x:
    cmd: python -c "open('src/x.txt', 'w').write('x')"
    outs: [src/x.txt]
"""
    )
    (root / "src" / "x.txt").unlink()  # make_x makes it (a file of the user's there stops a run)
    assert stages_in_order(root, "a") == ["make_x", "a"]


def test_unknown_target_is_an_error(tiny_repo: Path) -> None:
    from dvc.exceptions import DvcException

    with pytest.raises(DvcException, match="nope"):
        stages_in_order(tiny_repo, "nope")


def test_a_param_missing_from_params_yaml_is_named_before_anything_runs(tiny_repo: Path) -> None:
    """DVC names it only when it reaches the stage; the order check names it up front."""
    from dvc.exceptions import DvcException

    (tiny_repo / "params.yaml").write_text("paths:\n  x: src/x.txt\nb:\n  other: 1\n")
    assert stages_in_order(tiny_repo, "a") == ["a"]  # a has no params
    with pytest.raises(DvcException, match=r"stage 'b': Parameters 'b.factor' are missing from"):
        stages_in_order(tiny_repo, "b")


def test_reproduce_command_is_single_item() -> None:
    assert reproduce_command("b") == [sys.executable, "-m", "dvc", "repro", "--single-item", "b"]


def test_second_repro_reruns_nothing(tiny_repo: Path, run_log) -> None:
    run_dvc(REPRO, tiny_repo)
    assert run_log(tiny_repo) == ["a", "b", "c"]
    mtime = (tiny_repo / "c.txt").stat().st_mtime_ns

    output = run_dvc(REPRO, tiny_repo)
    assert run_log(tiny_repo) == ["a", "b", "c"]
    assert "Stage 'c' didn't change, skipping" in output
    assert (tiny_repo / "c.txt").stat().st_mtime_ns == mtime
    status = run_dvc([sys.executable, "-m", "dvc", "status"], tiny_repo)
    assert "up to date" in status


def test_param_change_reruns_b_and_c_only(tiny_repo: Path, run_log) -> None:
    run_dvc(REPRO, tiny_repo)
    params = tiny_repo / "params.yaml"
    params.write_text(params.read_text().replace("factor: 2", "factor: 3"))

    run_dvc(REPRO, tiny_repo)
    assert run_log(tiny_repo) == ["a", "b", "c", "b", "c"]
    assert (tiny_repo / "c.txt").read_text() == "xab3c"


def test_stage_commands_run_in_this_interpreter(repo_factory) -> None:
    # run_dvc puts sys.executable's folder first on PATH, so `python` is this venv's.
    root = repo_factory(
        """\
stages:
  where:
    cmd: python -c "import sys; print('prefix=' + sys.prefix)"
"""
    )
    output = run_dvc(reproduce_command("where"), root)
    assert f"prefix={sys.prefix}" in output


def test_failed_command_error_names_the_stage(repo_factory) -> None:
    root = repo_factory(
        """\
stages:
  boom:
    cmd: python -c "import sys; print('going down'); sys.exit(3)"
"""
    )
    with pytest.raises(StageFailedError, match="stage 'boom' failed") as info:
        run_dvc(reproduce_command("boom"), root, stage="boom")
    assert info.value.stage == "boom"
    assert info.value.returncode != 0
    assert "going down" in str(info.value)


def _gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie nobody reaps yet counts as ended)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_while_waiting_ends_the_whole_process_group(tmp_path: Path) -> None:
    """SIGTERM to `mudjack run` killed DVC only: the stage command DVC had started ran on as an
    orphan and wrote its output after DVC's lock was gone."""
    import signal
    import threading
    import time

    from pipeline.cli import SIGTERM_EXIT, exit_on_sigterm

    # The parent stands for `dvc repro`, its child for the stage command it runs.
    parent = ("import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); time.sleep(0.2); "
              "open('pids.tmp', 'w').write(f'{os.getpid()} {child.pid}'); "
              "os.rename('pids.tmp', 'pids'); child.wait()")
    pids_file = tmp_path / "pids"

    def stop_main_thread() -> None:
        deadline = time.monotonic() + 30
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    threading.Thread(target=stop_main_thread, daemon=True).start()
    with pytest.raises(SystemExit) as stopped, exit_on_sigterm():
        run_dvc([sys.executable, "-c", parent], tmp_path)
    assert stopped.value.code == SIGTERM_EXIT
    pids = [int(pid) for pid in pids_file.read_text().split()]
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), pids


@pytest.mark.parametrize(("output", "message"), [
    ("ERROR: '/p/reports/validation.json' is busy, it is being blocked by:\n"
     "  (PID 18838): /venv/bin/dvc repro -f intake\n\nIf there are no processes with such PIDs, "
     "you can manually remove '/p/.dvc/tmp/rwlock' and try again.\n",
     "DVC is busy: another run holds the lock (PID 18838); try again when it ends"),
    ("ERROR: Unable to acquire lock. Most likely another DVC process is running or was "
     "terminated abruptly.\n", "DVC is busy: another run holds the lock; try again when it ends"),
    ("ERROR: failed to reproduce 'b': something else\n", None),
])
def test_busy_message_is_one_line(output: str, message: str | None) -> None:
    from pipeline.dag import busy_message

    assert busy_message(output) == message
