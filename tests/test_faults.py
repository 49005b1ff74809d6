"""Faults: an interrupted patch resumes to the same weights; DVC and a corrupted cache object."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mudjack.bugs import Bug, save_bug
from mudjack.data import save_task
from mudjack.encoders import save_encoder
from mudjack.io import sha256_file, write_npz
from mudjack.patching.checkpoint import Checkpointer, Progress, inputs_key
from mudjack.patching.mudjacking import MudjackingParams, mudjacking
from mudjack.triggers import stamp

PATCH = MudjackingParams(epochs=3, views=2, shadow_fraction=0.3)  # 5 steps per epoch


def make_bug(scenario) -> Bug:
    """A bug with the true trigger: enough to patch from, without running intake."""
    task = scenario.task
    bug = stamp(task.test.x[np.flatnonzero(task.test.y == 3)[0]], scenario.trigger)
    reference = task.train.x[np.flatnonzero(task.train.y == 3)[0]]
    return Bug("b-1", "digits", 3, scenario.target, bug, reference, scenario.trigger)


def weights(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


class Interrupted(Exception):
    pass


class CrashAfter(Checkpointer):
    """Saves like the real one, then dies once `step` is reached: an interruption."""

    def __init__(self, folder: Path, every: int, key: str, step: int) -> None:
        super().__init__(folder, every, key)
        self.crash_at = step

    def save(self, model, optimiser, progress: Progress) -> None:
        super().save(model, optimiser, progress)
        if progress.step >= self.crash_at:
            raise Interrupted


@pytest.fixture(scope="module")
def patch_inputs(scenario):
    bugs = [make_bug(scenario)]
    key = inputs_key(scenario.backdoored, scenario.shadow, bugs, config=PATCH.model_dump())
    return scenario.backdoored, scenario.adapter, scenario.shadow, bugs, key


@pytest.fixture(scope="module")
def uninterrupted(patch_inputs):
    encoder, adapter, shadow, bugs, _ = patch_inputs
    return mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0)


def test_patching_is_deterministic_on_cpu(patch_inputs, uninterrupted):
    encoder, adapter, shadow, bugs, _ = patch_inputs
    again = mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0)
    first, second = weights(uninterrupted.encoder), weights(again.encoder)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert uninterrupted.steps == 15 and again.log == uninterrupted.log


def test_a_resumed_run_ends_with_the_same_weights(patch_inputs, uninterrupted, tmp_path):
    encoder, adapter, shadow, bugs, key = patch_inputs
    folder = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0,
                   checkpoint=CrashAfter(folder, 4, key, step=8))
    assert json.loads((folder / "state.json").read_text())["step"] == 8
    resumed = mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0,
                         checkpoint=Checkpointer(folder, 4, key))
    assert resumed.info["resumed_from_step"] == 8 and resumed.steps == 15
    first, second = weights(uninterrupted.encoder), weights(resumed.encoder)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert resumed.log == uninterrupted.log


def test_a_stale_or_damaged_checkpoint_is_ignored(patch_inputs, uninterrupted, tmp_path):
    encoder, adapter, shadow, bugs, key = patch_inputs
    folder = tmp_path / "ckpt"
    with pytest.raises(Interrupted):  # a checkpoint of other inputs
        mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0,
                   checkpoint=CrashAfter(folder, 4, "other", step=4))
    probe = copy.deepcopy(encoder)
    assert Checkpointer(folder, 4, key).load(probe, torch.optim.SGD([torch.zeros(1)], lr=0.1)) is None
    assert not folder.exists()  # removed, not trusted
    with pytest.raises(Interrupted):
        mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0,
                   checkpoint=CrashAfter(folder, 4, key, step=4))
    tensors = folder / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped
    tensors.write_bytes(bytes(data))
    fresh = mudjacking(encoder, adapter, shadow, bugs, PATCH, seed=0, checkpoint=Checkpointer(folder, 0, key))
    assert fresh.info["resumed_from_step"] is None
    first, second = weights(uninterrupted.encoder), weights(fresh.encoder)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_safetensors_files_are_byte_stable(tmp_path):
    """Same weights, same bytes: safetensors' writer orders metadata keys by a random hash."""
    from mudjack.encoders.base import read_metadata
    from mudjack.io import write_safetensors

    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    keys = [f"key{i}" for i in range(8)]
    for i, order in enumerate((keys, keys[::-1], keys[3:] + keys[:3])):
        write_safetensors(tmp_path / f"{i}.safetensors", tensors, {k: k.upper() for k in order})
    digests = {sha256_file(tmp_path / f"{i}.safetensors") for i in range(3)}
    assert len(digests) == 1
    assert read_metadata(tmp_path / "0.safetensors") == {k: k.upper() for k in keys}


# --------------------------------------------------------------------------- SIGKILL the stage

STAGE_PATCH = {"method": "mudjacking", "checkpoint_every": 5, "epochs": 8, "views": 2,
               "shadow_fraction": 0.5, "device": "cpu"}


def patch_project(root: Path, scenario) -> Path:
    """A project holding just what `python -m stages.patch` reads."""
    paths = {"shadow": "data/shadow.npz", "tasks": "data/tasks", "inbox": "inbox",
             "encoder": "models/deployed/encoder.safetensors", "heads": "models/deployed"}
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "threads": 1, "paths": paths, "patch": STAGE_PATCH}))
    write_npz(root / paths["shadow"], x=scenario.shadow)
    save_task(scenario.task, root / paths["tasks"] / "digits")
    save_encoder(scenario.backdoored, scenario.adapter, root / paths["encoder"])
    save_bug(make_bug(scenario), root / "bugs")
    return root


def start_stage(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.patch"], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the stage ended before a checkpoint: {process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.mark.slow  # three runs of the stage in subprocesses: ~15 s idle, a minute on a busy host
def test_a_killed_patch_stage_resumes_to_the_same_encoder(scenario, tmp_path):
    whole = patch_project(tmp_path / "whole", scenario)
    killed = patch_project(tmp_path / "killed", scenario)
    reference = start_stage(whole)  # the uninterrupted run, alongside
    victim = start_stage(killed)
    checkpoint = killed / "models/.checkpoints/patch"
    wait_for(checkpoint / "state.json", victim)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (killed / "models/patched/encoder.safetensors").exists()
    step = json.loads((checkpoint / "state.json").read_text())["step"]

    rerun = subprocess.run([sys.executable, "-m", "stages.patch"], cwd=killed, text=True,
                           capture_output=True, check=True)
    assert f"resumed from step {step}" in rerun.stdout
    assert 0 < step < json.loads((killed / "reports/patch.json").read_text())["steps"]  # mid-run
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    encoder = "models/patched/encoder.safetensors"
    assert sha256_file(killed / encoder) == sha256_file(whole / encoder)
    assert not checkpoint.exists()  # removed after success


def test_a_diverged_patch_fails_and_writes_no_encoder(scenario, tmp_path, monkeypatch, capsys):
    """A run whose weights went NaN (here: the real run, one weight set to NaN after it, as a
    diverging optimiser leaves them) was written and the stage exited 0; retrain then named
    the patched file as the problem."""
    from stages import patch as stage

    root = patch_project(tmp_path / "diverged", scenario)
    real = stage.run_patch

    def diverged(*args, **kwargs):
        result = real(*args, **kwargs)
        next(iter(result.encoder.parameters())).data.view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(stage, "run_patch", diverged)
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit, match=r"patch: the patch diverged \(.*holds NaN or infinite values\)"):
        stage.main()
    assert not (root / "models/patched/encoder.safetensors").exists()
    assert not (root / "reports/patch.json").exists()


# --------------------------------------------------------------------------- DVC cache corruption

DVC_YAML = """\
stages:
  upper:
    cmd: tr a-z A-Z < in.txt > out.txt
    deps: [in.txt]
    outs: [out.txt]
"""


def dvc(root: Path, command: str) -> object:
    """Run one DVC command through its Python API (the CLI's code, minus a second's start-up)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves targets from the cwd
        if command == "repro":
            return [stage.addressing for stage in repo.reproduce()]
        return getattr(repo, command)()


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with one stage, run once: out.txt is in the cache."""
    from dvc.repo import Repo

    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    with Repo.init(str(root)) as repo, repo.config.edit() as config:
        config["core"]["analytics"] = False
    (root / "in.txt").write_text("hello\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    assert dvc(root, "repro") == ["upper"]
    return root


def cache_object(root: Path) -> Path:
    (path,) = (root / ".dvc/cache/files/md5").glob("*/*")
    path.chmod(0o644)  # DVC makes cache objects read-only
    return path


def intact(path: Path) -> bool:
    """A DVC 3 cache object is named by the md5 of its content."""
    return hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name


def test_dvc_finds_a_rewritten_cache_object_and_repro_replaces_it(dvc_repo):
    obj = cache_object(dvc_repo)
    stamp_ = obj.stat().st_mtime
    obj.write_text("EVIL!\n")  # same size, new content
    os.utime(obj, (stamp_ + 10, stamp_ + 10))
    assert dvc(dvc_repo, "status") == {"upper": [{"changed outs": {"out.txt": "not in cache"}}]}
    assert dvc(dvc_repo, "repro") == ["upper"]  # reruns the stage, caching a good copy
    assert intact(obj) and obj.read_text() == "HELLO\n"
    assert dvc(dvc_repo, "status") == {}


def test_dvc_trusts_a_cache_object_whose_size_and_mtime_are_kept(dvc_repo):
    """DVC 3.67 rehashes only what its state DB saw change: a forgery keeping size and mtime
    passes `dvc status` and is checked out as is. Rehashing the objects catches it."""
    obj = cache_object(dvc_repo)
    before = obj.stat()
    obj.write_text("EVIL!\n")
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert dvc(dvc_repo, "status") == {}
    (dvc_repo / "out.txt").unlink()
    dvc(dvc_repo, "checkout")
    assert (dvc_repo / "out.txt").read_text() == "EVIL!\n"
    assert not intact(obj)
    shutil.rmtree(dvc_repo / ".dvc/cache")  # the remedy: drop the bad object, rebuild
    (dvc_repo / "out.txt").unlink()
    assert dvc(dvc_repo, "repro") == ["upper"]
    assert (dvc_repo / "out.txt").read_text() == "HELLO\n" and intact(cache_object(dvc_repo))
