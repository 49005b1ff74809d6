"""DDP patching: sharding, and 2 gloo processes under torchrun against 1 on the same global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mudjack.patching.distributed import (
    Distributed,
    distributed_option,
    epoch_order,
    local_batches,
    seed_step,
    setup,
)
from tests.helpers import run_if
from tests.helpers.ddp_patch_worker import tiny_problem  # the worker's encoder, to compare with

WORKER = Path(__file__).parent / "helpers" / "ddp_patch_worker.py"
CPU = torch.device("cpu")


def ranks(world: int) -> list[Distributed]:
    return [Distributed(rank, world, rank, CPU) for rank in range(world)]


def test_the_rank_batches_of_a_step_make_up_the_single_process_batch():
    single = Distributed(0, 1, 0, CPU)
    order = epoch_order(30, epoch=2, seed=7, context=single)
    whole = local_batches(order, 8, single)
    for world in (2, 4):
        shards = [local_batches(epoch_order(30, 2, seed=7, context=r), 8, r) for r in ranks(world)]
        assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
        for step, batch in enumerate(whole[:-1]):  # the last one holds the padding
            together = torch.cat([s[step] for s in shards])
            assert sorted(together.tolist()) == sorted(batch.tolist())
        assert {len(s[-1]) for s in shards} == {len(shards[0][-1])}  # equal shards, padded
    assert not torch.equal(order, epoch_order(30, 3, seed=7, context=single))  # a new order every epoch


def test_each_rank_draws_its_own_augmentation_reproducibly():
    draws = {}
    for context in ranks(2):
        seed_step(0, 5, context)
        draws[context.rank] = torch.rand(4)
    seed_step(0, 5, ranks(2)[1])
    assert torch.equal(torch.rand(4), draws[1]) and not torch.equal(draws[0], draws[1])


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="multiple of the world size"):
        local_batches(torch.arange(12), 6, Distributed(0, 4, 0, CPU))


def test_a_single_process_or_mode_off_stays_out_of_torch_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert setup("auto") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert setup("off") is None
    assert distributed_option(lambda inputs, params, seed: None, None) == {}
    with pytest.raises(SystemExit, match="does not run under torchrun"):
        distributed_option(lambda inputs, params, seed: None, Distributed(1, 2, 1, CPU))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, *arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """torchrun on 127.0.0.1 with a free port, gloo on the loopback interface."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *arguments]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def torchrun(processes: int, out: Path, *extra: str) -> dict:
    """Run the worker; rank 0's run.json."""
    done = launch(processes, str(WORKER), str(out), *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads((out / "run.json").read_text())


def test_two_gloo_processes_follow_the_one_process_trajectory(tmp_path):
    """Augmentation off, the same global batches: DDP's averaged gradient is the single-process
    gradient, so the loss log and the weights agree to float error."""
    one = torchrun(1, tmp_path / "one")
    two = torchrun(2, tmp_path / "two")
    assert (one["backend"], two["backend"]) == ("gloo", "gloo")
    assert (one["world_size"], two["world_size"], two["env_world_size"]) == (1, 2, 2)
    assert one["steps"] == two["steps"] == 8  # 2 epochs of 32 images in global batches of 8
    for a, b in zip(one["log"], two["log"], strict=True):
        assert b == pytest.approx(a, abs=1e-5)
    first = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    second = load_file(str(tmp_path / "two" / "encoder.safetensors"))
    initial = tiny_problem()[0].state_dict()
    assert first.keys() == second.keys() == initial.keys()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=1e-5, rtol=1e-4)
    assert any((first[k] - initial[k]).abs().max() > 1e-3 for k in first)  # it did train


@pytest.mark.slow  # three torchrun launches: ~30 s idle, a minute on a busy host
def test_an_interrupted_ddp_run_resumes_to_the_same_weights(tmp_path):
    """With augmentation on: each rank's views are seeded per step, rank 0 writes the checkpoint
    and both ranks resume from it, so the result equals an uninterrupted run's."""
    whole = torchrun(2, tmp_path / "whole", "--augment")
    checkpoint = tmp_path / "checkpoint"
    stopped = launch(2, str(WORKER), str(tmp_path / "resumed"), "--augment", "--checkpoint",
                     str(checkpoint), "--stop-after", "4")
    assert stopped.returncode != 0 and not (tmp_path / "resumed").exists()
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 4
    resumed = torchrun(2, tmp_path / "resumed", "--augment", "--checkpoint", str(checkpoint))
    assert resumed["resumed_from"] == 4 and resumed["log"] == whole["log"]
    first = load_file(str(tmp_path / "whole" / "encoder.safetensors"))
    second = load_file(str(tmp_path / "resumed" / "encoder.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)


@run_if(gpu=True)
def test_a_cuda_run_takes_nccl(tmp_path):
    run = torchrun(1, tmp_path / "cuda", "--device", "cuda")
    assert run["backend"] == "nccl" and run["steps"] == 8


# --------------------------------------------------------------------------- the stage under torchrun


def stage_project(root: Path) -> Path:
    """A project holding what `python -m stages.patch` reads, with the worker's tiny problem."""
    import numpy as np
    import yaml

    from mudjack.bugs import save_bug
    from mudjack.data import LabelledSet, Task, save_task
    from mudjack.encoders import save_encoder
    from mudjack.io import write_npz

    encoder, adapter, shadow, bug = tiny_problem()
    paths = {"shadow": "data/shadow.npz", "tasks": "data/tasks", "inbox": "inbox",
             "encoder": "models/deployed/encoder.safetensors", "heads": "models/deployed"}
    patch = {"method": "mudjacking", "checkpoint_every": 3, "device": "cpu", "epochs": 2,
             "batch_size": 8, "views": 2}
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "threads": 1, "paths": paths,
                                                      "patch": patch}))
    write_npz(root / paths["shadow"], x=shadow)
    labels = np.arange(8) % 2
    task = LabelledSet(shadow[:8], labels)
    save_task(Task("t", [0, 1], task, task), root / paths["tasks"] / "t")
    save_encoder(encoder, adapter, root / paths["encoder"])
    save_bug(bug, root / "bugs")
    return root


@pytest.mark.slow  # two processes of the stage with augmentation: ~20 s idle, longer on a busy host
def test_the_patch_stage_under_torchrun_writes_once_from_rank_0(tmp_path):
    root = stage_project(tmp_path / "project")
    done = launch(2, "-m", "stages.patch", cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("patch: mudjacking on 1 bugs, 8 steps") == 1  # rank 0 alone reports
    summary = json.loads((root / "reports/patch.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    assert (root / "models/patched/encoder.safetensors").is_file()
    assert not (root / "models/.checkpoints/patch").exists()  # rank 0 wrote and then removed it
