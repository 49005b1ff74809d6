"""Where the stages write: every output dvc.yaml declares is readied when its stage starts
(what a killed run left beside it removed, a link out of the project refused); a folder
swap that fails leaves the previous output and no `.old` folder; artifacts are readable
by others; an output the operating system refuses is one line from the stage, not a
traceback."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mudjack import io
from mudjack.heads import Head, save_head
from mudjack.io import ArtifactError, atomic_dir, ready_outputs

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


class Readied(Exception):
    """Raised by the recording `ready_outputs`: the stage stops before it reads or writes."""


def declared_outputs(stage: str) -> list[str]:
    entries = [e for key in ("outs", "metrics", "plots") for e in STAGES[stage].get(key) or []]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_readies_each_output_dvc_yaml_declares(stage: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    module = importlib.import_module(f"stages.{stage}")
    readied: list[str] = []

    def record(*paths: str | Path, root: str | Path = ".") -> None:
        readied.extend(os.path.normpath(path) for path in paths)
        raise Readied

    monkeypatch.setattr(module, "ready_outputs", record)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Readied):
        module.main()
    for out in declared_outputs(stage):
        assert any(p == out or Path(p).is_relative_to(out) for p in readied), (out, readied)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written yet


def test_ready_outputs_removes_a_killed_runs_leftovers_of_those_outputs_only(tmp_path: Path) -> None:
    stale = [tmp_path / "models" / ".heads.k1", tmp_path / "models" / ".heads.old.x2" / "heads",
             tmp_path / "reports" / ".export.json.a1.tmp"]
    for path in stale:
        path.mkdir(parents=True) if not path.suffix else (path.parent.mkdir(parents=True),
                                                          path.write_text("half"))
    keep = [tmp_path / "models" / ".onnx.z9", tmp_path / "reports" / ".other.tmp"]
    for path in keep:
        path.mkdir(parents=True, exist_ok=True) if not path.suffix else path.write_text("mine")
    ready_outputs("models/heads", "reports/export.json", "", root=tmp_path)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_ready_outputs_refuses_an_output_linked_out_of_the_project(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "models").mkdir(parents=True)
    outside.mkdir()
    (project / "models" / "patched").symlink_to(outside)
    (project / "reports").symlink_to(project / "models")  # a link that stays inside is fine
    ready_outputs("reports/patch.json", root=project)
    with pytest.raises(ArtifactError, match=r"models/patched/encoder.safetensors: resolves to .*outside"):
        ready_outputs("models/patched/encoder.safetensors", root=project)


def _failing_replace(fail_on: int) -> object:
    calls = {"n": 0}
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise PermissionError(1, "Operation not permitted", str(src))
        real(src, dst)

    return replace


@pytest.mark.parametrize("fail_on", [1, 2], ids=["moving the old aside", "moving the new in"])
def test_a_failed_folder_swap_keeps_the_previous_output_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int) -> None:
    out = tmp_path / "heads"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    monkeypatch.setattr(io.os, "replace", _failing_replace(fail_on))
    with pytest.raises(PermissionError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("this run")
    assert [p.name for p in tmp_path.iterdir()] == ["heads"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_a_saved_head_is_readable_by_others(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        save_head(Head(4, 3, hidden=[], dropout=0.0), tmp_path / "t" / "head.safetensors")
    finally:
        os.umask(previous)
    assert (tmp_path / "t" / "head.safetensors").stat().st_mode & 0o777 == 0o644


def test_an_output_folder_that_is_a_file_is_one_line_from_the_stage(tmp_path: Path) -> None:
    from tests.hostile.generate import build_workspace

    ws = build_workspace(tmp_path)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(ws.root / "reports")
    (ws.root / "reports").write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "stages.validate"], cwd=ws.root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("validate: ") and "reports" in done.stderr, done.stderr


def test_a_stage_that_crashes_inside_native_code_says_where() -> None:
    """A segfault in torch ended the patch stage with exit -11 and not a word."""
    crash = "import stages, ctypes; ctypes.string_at(0)"
    done = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Segmentation fault" in done.stderr, done.stderr
    assert 'File "<string>", line 1' in done.stderr
