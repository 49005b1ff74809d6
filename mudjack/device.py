"""Device choice and the speed switches (bf16 autocast, pinned transfers)."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mudjack.config import ParamsError


def select_device(requested: str = "auto") -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA on a machine without it is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and (device.index or 0) >= cuda_devices():
        raise ParamsError(f"device {requested!r} requested, but this machine has {cuda_devices()} "
                          f"CUDA device(s)")
    return device


class Placed(nn.Module):
    """`module` kept on `device`: its inputs are moved there and its outputs back to the input's
    device, so code written for CPU tensors (intake's scans, fits and checks) runs the module on a
    GPU unchanged, gradients to the inputs included.

    Conversions (`.to`, `.cpu()`, `.float()`) leave it as it is: `extract_features` moves the
    encoder it is given to the CPU by default, and the placement must survive that.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module.to(device)
        self.device = device

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs.to(self.device)).to(inputs.device)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Placed:
        return self


def cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.cache  # the hardware does not change; autocast asks on every step
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN runs
    bf16 convolutions and matmuls faster than fp32; elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, and on a CPU with native bf16 when `cpu_bf16` asks for it
    (resnet20's patch step: 0.97 s -> 0.42 s on 2 AMX cores); otherwise a no-op."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16 and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned, non-blocking host-to-GPU copies; a plain move elsewhere."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread for the block (a no-op off the CPU).

    For chains of small elementwise ops: on a shared host each op's OpenMP barrier can
    wait on a descheduled thread, which made the batched augmentation 5-15x slower with
    2 threads than with 1 on 2 busy cores.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily switch a module to eval mode, restoring its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Temporarily run torch ops on `count` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
