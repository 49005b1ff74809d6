"""Loading PyTorch checkpoints (.pt/.th) without ever running code from the file.

A .pt/.th file is a pickle: unpickling an untrusted one can call any function
(`os.system`, ...). `load_torch_checkpoint` only accepts tensors and plain
containers (torch's weights-only unpickler) and turns a refusal into an
`UnsafeCheckpointError` naming what the file tried to call. The pipeline's own
weights are safetensors and never go through here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

_GLOBAL = re.compile(r"GLOBAL (\S+)")
_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(.+)")


class UnsafeCheckpointError(ValueError):
    """The checkpoint holds more than weights: loading it would execute code from the file."""


def load_torch_checkpoint(path: str | Path) -> Any:
    """The contents of a .pt/.th file (tensors, dicts, lists, numbers) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UnsafeCheckpointError(_explain(path, str(err))) from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    except (RuntimeError, EOFError, IndexError, KeyError) as err:  # truncated or not a checkpoint
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err!r}") from err


def _explain(path: Path, message: str) -> str:
    """Why torch's weights-only unpickler refused the file, in one sentence."""
    if found := _GLOBAL.search(message):
        what = f"unpickling it would call {found.group(1).rstrip('.,')}"
    elif found := _REFUSAL.search(message):
        what = f"it holds pickle instructions beyond plain weights ({found.group(1).strip()})"
    else:
        what = "it holds objects other than plain weights"
    return (f"refusing to load {path}: {what}; only tensors and plain containers are allowed "
            f"(convert the file to safetensors, or re-save just its state_dict)")
