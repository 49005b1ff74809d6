"""A run never overwrites the data a repair starts from (`paths` in params.yaml), even where a
scenario stage writes the same path: it stops before anything runs, naming both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dvc.exceptions import DvcException

from pipeline.dag import run_dvc, stages_in_order
from pipeline.user_data import repair_inputs

# make_x writes src/x.txt, which params.yaml names as paths.x: the scenario-stage situation
# (attack writes the default paths.inbox, paths.encoder and paths.heads).
SCENARIO_YAML = """\
stages:
  make_x:
    cmd: python -c "import pathlib; pathlib.Path('src/x.txt').write_text('made')"
    outs: [src/x.txt]
  a:
    cmd: python step.py a ${paths.x} a.txt
    deps: [step.py, "${paths.x}"]
    outs: [a.txt]
"""


def test_a_users_file_at_a_stage_output_is_never_overwritten(repo_factory) -> None:
    root = repo_factory(SCENARIO_YAML)  # src/x.txt is there, written by hand: never by make_x
    with pytest.raises(DvcException, match=r"stage 'make_x' would overwrite src/x.txt, which holds "
                                           r"paths.x \(src/x.txt\)"):
        stages_in_order(root, "a")
    assert (root / "src" / "x.txt").read_text() == "x"


def test_a_stage_may_rewrite_what_it_wrote_but_not_what_changed_since(repo_factory) -> None:
    root = repo_factory(SCENARIO_YAML)
    (root / "src" / "x.txt").unlink()
    assert stages_in_order(root, "a") == ["make_x", "a"]  # nothing there yet: the stage makes it
    run_dvc([sys.executable, "-m", "dvc", "repro"], root)
    assert stages_in_order(root, "a") == ["make_x", "a"]  # as the stage left it
    (root / "src" / "x.txt").write_text("a report submitted since")
    with pytest.raises(DvcException, match="is not what the stage last wrote"):
        stages_in_order(root, "a")


def test_repair_inputs_reads_only_usable_paths(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("paths:\n  inbox: ./inbox/\n  truth: ''\n  seed: 3\n")
    assert repair_inputs(tmp_path) == {"inbox": "inbox"}
    (tmp_path / "params.yaml").write_text("paths: [1]\n")
    assert repair_inputs(tmp_path) == {}
    (tmp_path / "params.yaml").unlink()
    assert repair_inputs(tmp_path) == {}
