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
