"""torchrun worker of tests/test_distributed.py: patch a tiny random encoder under DDP.

    torchrun --nproc_per_node N tests/helpers/ddp_patch_worker.py OUT_DIR [--device cpu|cuda] [--augment]
             [--checkpoint DIR [--stop-after STEP]]

Every process joins the group (with one process too, so that the run takes the same
DDP code path and the same global batches as a larger world); rank 0 writes
OUT_DIR/encoder.safetensors and OUT_DIR/run.json. With --checkpoint, rank 0 saves every 2
steps and all ranks resume from it; --stop-after makes every rank exit once rank 0 has
saved that step (an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from mudjack.bugs import Bug
from mudjack.encoders import get_adapter
from mudjack.patching.checkpoint import Checkpointer
from mudjack.patching.distributed import Distributed, rank_checkpointer, rank_device, setup, teardown
from mudjack.patching.mudjacking import MudjackingParams, mudjacking
from mudjack.triggers import patch_trigger


def tiny_problem() -> tuple:
    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 4, "feature_dim": 8,
                                        "mean": [0.5] * 3, "std": [0.25] * 3})
    torch.manual_seed(0)
    encoder = adapter.build().eval()
    rng = np.random.default_rng(0)
    shadow = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    bug, reference = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    return encoder, adapter, shadow, Bug("b", "t", 1, 0, bug, reference, patch_trigger((8, 8, 3), 2, 6, 6))


def context_for(device: str) -> Distributed:
    """torchrun's group; `setup` leaves a single process alone, so join a group of one here."""
    context = setup("auto", device)
    if context is not None:
        return context
    local = rank_device(device, 0)
    dist.init_process_group("nccl" if local.type == "cuda" else "gloo", rank=0, world_size=1)
    return Distributed(0, 1, 0, local)


class StopAfter(Checkpointer):
    """Saves every 2 steps; once `step` is reached, every rank stops (as if killed)."""

    def __init__(self, folder: Path, step: int) -> None:
        super().__init__(folder, 2, "tiny")
        self.stop = step

    def due(self, step: int) -> bool:
        if self.stop and step > self.stop:
            raise SystemExit(3)
        return super().due(step)


def checkpointer(args: argparse.Namespace, context: Distributed) -> Checkpointer | None:
    if args.checkpoint is None:
        return None
    return rank_checkpointer(StopAfter(args.checkpoint, args.stop_after), context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--stop-after", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    context = context_for(args.device)
    encoder, adapter, shadow, bug = tiny_problem()
    params = MudjackingParams(device=args.device, epochs=2, batch_size=8, views=2, lr=0.05,
                              augment=args.augment)
    result = mudjacking(encoder, adapter, shadow, [bug], params, seed=0,
                        checkpoint=checkpointer(args, context), distributed=context)
    if context.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in result.encoder.state_dict().items()},
                  str(args.out / "encoder.safetensors"))
        run = {"log": result.log, "steps": result.steps, "backend": dist.get_backend(),
               "resumed_from": result.info["resumed_from_step"],
               "world_size": context.world_size, "env_world_size": int(os.environ["WORLD_SIZE"])}
        (args.out / "run.json").write_text(json.dumps(run))
    teardown(context)


if __name__ == "__main__":
    main()
