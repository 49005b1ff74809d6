"""Resumable training: a checkpoint every N steps, tied to its inputs, with no pickle.

A checkpoint is one folder written whole (temp folder + rename): `state.safetensors`
(model weights, optimiser tensors, torch RNG state, the current epoch's batch order)
and `state.json` (the key of the inputs, step and epoch counters, the running loss
sums and log, optimiser hyper-parameters, numpy and python RNG states, and the
sha256 of the tensors file). A checkpoint whose key differs from the current inputs'
(other params, bugs, encoder, shadow data or thread count), or whose tensors do not
match their hash, is ignored and removed. Resuming restores every RNG, so on CPU a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mudjack.bugs import Bug
from mudjack.data import iter_batches
from mudjack.io import atomic_dir, sha256_file

VERSION = 1
TENSORS = "state.safetensors"
META = "state.json"
HASH_ROWS = 1024  # shadow rows hashed at a time


@dataclass
class Progress:
    """Where a training loop stands: counters, this epoch's batch order and loss sums, the log."""

    epoch: int = 1                      # the epoch in progress (1-based)
    position: int = 0                   # batches of this epoch already done
    step: int = 0                       # optimiser steps done in all
    order: torch.Tensor | None = None   # this epoch's shuffled sample order
    totals: dict[str, float] = field(default_factory=dict)
    log: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0                # training time before this process
    resumed_from: int | None = None     # the step a resumed run started from
    started: float = field(default_factory=time.perf_counter)  # this process's start

    def elapsed(self) -> float:
        """Training seconds in all, across interruptions."""
        return self.seconds + time.perf_counter() - self.started

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.totals[name] = self.totals.get(name, 0.0) + value
        self.position += 1
        self.step += 1

    def end_epoch(self, batches: int) -> None:
        self.log.append({"epoch": self.epoch, **{k: v / batches for k, v in self.totals.items()}})
        self.epoch, self.position, self.order, self.totals = self.epoch + 1, 0, None, {}


# --------------------------------------------------------------------------- keys and RNG


def accepts_checkpoint(function: Callable[..., Any]) -> bool:
    """Whether a patch function takes a `checkpoint` keyword (directly or through **options)."""
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == "checkpoint" or p.kind is p.VAR_KEYWORD for p in parameters)


def inputs_key(encoder: nn.Module, shadow: np.ndarray, bugs: list[Bug], *, config: dict[str, Any]) -> str:
    """sha256 over everything that decides the result: config, encoder, shadow data and bugs."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"threads={torch.get_num_threads()}".encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str(shadow.shape).encode())
    for rows in iter_batches(shadow, HASH_ROWS):  # a mapped set is hashed batch by batch
        digest.update(np.ascontiguousarray(rows).tobytes())
    for bug in bugs:
        digest.update(json.dumps([bug.id, bug.task, bug.label, bug.predicted]).encode())
        triggers = [array for t in bug.triggers
                    for array in (t.mask, t.pattern, *(() if t.flow is None else (t.flow,)))]
        for array in (bug.bug, bug.reference, *triggers):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) of the torch (CPU and CUDA), numpy and python global RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    meta = {"numpy": [name, keys.tolist(), pos, has_gauss, gauss],
            "python": [python_version, list(python_state), python_gauss]}
    return tensors, meta


def set_rng_states(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    python_version, python_state, python_gauss = meta["python"]
    random.setstate((python_version, tuple(python_state), python_gauss))


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU for the block (CUDA would also need a cuBLAS setting)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------- optimiser


def _optimiser_tensors(optimiser: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and JSON-safe values."""
    state = optimiser.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimiser(optimiser: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["scalars"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimiser.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Saves and restores a training loop's whole state in `folder` every `every` steps."""

    def __init__(self, folder: str | Path, every: int, key: str) -> None:
        self.folder, self.every, self.key = Path(folder), every, key

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, model: nn.Module, optimiser: torch.optim.Optimizer, progress: Progress) -> None:
        rng_tensors, rng_meta = rng_states()
        optim_tensors, optim_meta = _optimiser_tensors(optimiser)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors |= optim_tensors | rng_tensors
        if progress.order is not None:
            tensors["progress.order"] = progress.order.cpu().contiguous()
        with atomic_dir(self.folder) as tmp:
            save_file(tensors, str(tmp / TENSORS))
            meta = {"version": VERSION, "key": self.key, "epoch": progress.epoch,
                    "position": progress.position, "step": progress.step, "totals": progress.totals,
                    "log": progress.log, "seconds": progress.elapsed(), "optimiser": optim_meta,
                    "rng": rng_meta, "tensors_sha256": sha256_file(tmp / TENSORS)}
            (tmp / META).write_text(json.dumps(meta))

    def load(self, model: nn.Module, optimiser: torch.optim.Optimizer) -> Progress | None:
        """Restore model, optimiser and RNGs from a valid checkpoint of these inputs, if any."""
        meta = self._valid_meta()
        if meta is None:
            return None
        tensors = load_file(str(self.folder / TENSORS))
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimiser(optimiser, tensors, meta["optimiser"])
        set_rng_states(tensors, meta["rng"])
        return Progress(epoch=meta["epoch"], position=meta["position"], step=meta["step"],
                        order=tensors.get("progress.order"), totals=meta["totals"], log=meta["log"],
                        seconds=meta["seconds"], resumed_from=meta["step"])

    def _valid_meta(self) -> dict[str, Any] | None:
        """The checkpoint's metadata when it exists, is complete and belongs to these inputs."""
        meta_path, tensors_path = self.folder / META, self.folder / TENSORS
        if not meta_path.is_file() or not tensors_path.is_file():
            self.clear()
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError, RecursionError):
            meta = {}
        if not isinstance(meta, dict):  # valid JSON, but not a checkpoint's
            meta = {}
        if (meta.get("version") != VERSION or meta.get("key") != self.key
                or meta.get("tensors_sha256") != sha256_file(tensors_path)):
            self.clear()  # stale (other inputs) or damaged: start over
            return None
        return meta

    def clear(self) -> None:
        """Remove the checkpoint and any temporary folder a killed write left next to it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.parent.is_dir():
            for leftover in self.folder.parent.glob(f".{self.folder.name}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
