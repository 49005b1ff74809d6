"""Data-parallel patching with torch.distributed, launched with torchrun.

    torchrun --standalone --nproc_per_node 2 -m stages.patch

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `setup` joins the process group (gloo on
the CPU, NCCL on CUDA, one GPU per local rank) when more than one process runs and
`patch.distributed` is `auto`. Every epoch has one global shuffled order, drawn from a
generator seeded with (seed, epoch) so all ranks agree, padded to a multiple of the world
size; each global batch of `batch_size` images is split across the ranks (rank r takes
every world-th image from r), so the union of one step's rank batches is the batch a
single process would take. Each rank adds its own K views of every bug and reference.
DistributedDataParallel averages the gradients; with mean-reduced losses that is the
gradient of the single-process loss on the global batch (exactly so with augmentation
off, where the rank's bug views are identical copies). Each rank reseeds its augmentation
generator every step from (seed, rank, step), so a run is reproducible and resumable.
Only rank 0 writes outputs and checkpoints; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mudjack.device import select_device
from mudjack.patching.checkpoint import Checkpointer, Progress

Mode = Literal["auto", "off"]
ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def backend(self) -> str:
        return backend_for(self.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def launched_world_size() -> int:
    """The world size torchrun announced in the environment (1 when not launched by it)."""
    if not all(name in os.environ for name in ENVIRONMENT):
        return 1
    return int(os.environ["WORLD_SIZE"])


def rank_device(requested: str, local_rank: int) -> torch.device:
    """CUDA device `local_rank` when CUDA is requested or `auto` finds it; else the CPU."""
    device = select_device(requested)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def setup(mode: Mode = "auto", device: str = "auto") -> Distributed | None:
    """Join the process group torchrun prepared; None for a single process or mode `off`."""
    if mode == "off" or launched_world_size() <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    context = Distributed(rank, launched_world_size(), local_rank, rank_device(device, local_rank))
    if context.device.type == "cuda":
        torch.cuda.set_device(context.device)
    if not dist.is_initialized():
        dist.init_process_group(context.backend, rank=rank, world_size=context.world_size)
    return context


def teardown(context: Distributed | None) -> None:
    if context is not None and dist.is_initialized():
        dist.destroy_process_group()


def is_main(context: Distributed | None) -> bool:
    return context is None or context.is_main


def distributed_option(function: Callable[..., Any], context: Distributed | None) -> dict[str, Any]:
    """The keyword a patch function takes under DDP; an error for one that cannot take it."""
    if context is None:
        return {}
    parameters = inspect.signature(function).parameters.values()
    if not any(p.name == "distributed" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise SystemExit(f"{function.__name__} does not run under torchrun; launch one process "
                         "or set patch.distributed: off")
    return {"distributed": context}


# --------------------------------------------------------------------------- the loop's hooks


def epoch_order(count: int, epoch: int, *, seed: int, context: Distributed | None) -> torch.Tensor:
    """This epoch's sample order: the global RNG alone, or (seed, epoch) shared by all ranks."""
    if context is None:
        return torch.randperm(count)
    generator = torch.Generator().manual_seed(derived_seed(seed, "order", epoch))
    order = torch.randperm(count, generator=generator)
    padding = -count % context.world_size  # equal shards: repeat the first few, as DistributedSampler
    return torch.cat([order, order[:padding]])


def local_batches(order: torch.Tensor, size: int, context: Distributed | None) -> list[torch.Tensor]:
    """Consecutive global batches of `size`; under DDP, this rank's share of each."""
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    if context is None:
        return batches
    if size % context.world_size:
        raise ValueError(f"batch_size {size} must be a multiple of the world size {context.world_size}")
    return [batch[context.rank::context.world_size] for batch in batches]


def seed_step(seed: int, step: int, context: Distributed | None) -> None:
    """Under DDP, seed this rank's augmentation for `step` (ranks differ, reruns agree)."""
    if context is not None:
        torch.manual_seed(derived_seed(seed, "step", step, context.rank))


def average_terms(terms: dict[str, torch.Tensor], context: Distributed | None) -> dict[str, torch.Tensor]:
    """The loss terms averaged over the ranks (what a single process on the global batch logs)."""
    if context is None:
        return terms
    values = torch.stack([value.detach().float() for value in terms.values()])
    dist.all_reduce(values)  # sum; the bug terms are per-rank means of equal weight
    return dict(zip(terms, values / context.world_size, strict=True))


def wrap(model: nn.Module, context: Distributed | None) -> nn.Module:
    """DistributedDataParallel around the patched encoder (rank 0's weights are broadcast)."""
    if context is None:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    # BatchNorm is frozen, so there are no buffers to keep in sync at each forward.
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False,
                                   gradient_as_bucket_view=True)


def derived_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- checkpoints


class RankCheckpointer(Checkpointer):
    """One rank's view of the run's checkpointer: every rank resumes from it, rank 0 alone
    writes or removes it, and rank 0 checks it (removing a stale one) before the others read."""

    def __init__(self, inner: Checkpointer, main: bool) -> None:
        super().__init__(inner.folder, inner.every, inner.key)
        self.inner, self.main = inner, main

    def load(self, model: nn.Module, optimiser: torch.optim.Optimizer) -> Progress | None:
        if not self.main:
            dist.barrier()  # wait for rank 0's check
        progress = self.inner.load(model, optimiser)
        if self.main:
            dist.barrier()
        return progress

    def due(self, step: int) -> bool:
        return self.inner.due(step)

    def save(self, model: nn.Module, optimiser: torch.optim.Optimizer, progress: Progress) -> None:
        if self.main:
            self.inner.save(model, optimiser, progress)

    def clear(self) -> None:
        if self.main:
            self.inner.clear()


def rank_checkpointer(checkpoint: Checkpointer | None, context: Distributed | None) -> Checkpointer | None:
    """The checkpointer this rank uses (the given one itself outside DDP)."""
    if checkpoint is None or context is None:
        return checkpoint
    return RankCheckpointer(checkpoint, context.is_main)
