"""Loading weights files without trusting them: every problem is one `WeightsError` line.

safetensors: the header is read and checked here (length within the file and under
MAX_HEADER_BYTES, UTF-8 JSON, known dtypes, offsets matching shapes) before any tensor is
read; `check_tensors` compares its names, shapes and dtypes with the model's, built on the
meta device (no memory), so a file naming a huge model fails before anything is allocated.

.pt/.th: a pickle; unpickling an untrusted one can call any function (`os.system`, ...).
`load_torch_checkpoint` only accepts tensors and plain containers (torch's weights-only
unpickler) and turns a refusal into an `UnsafeCheckpointError` naming what the file tried
to call. Before that, the storage sizes a file declares must fit in the file: torch
allocates them before reading, so a 50 KB file could claim gigabytes (an archive that
unpacks to more than its size; a legacy, non-zip file whose pickle declares more elements
than follow it). The pipeline's own weights are safetensors and never go through here.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mudjack.safepath import one_line, read_bounded

MAX_HEADER_BYTES = 16 << 20   # safetensors headers of real models are KiB to a few MiB
MAX_METADATA_JSON = 64 << 10  # an adapter config or a head spec inside the header
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
_GLOBAL = re.compile(r"GLOBAL (\S+)")
_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(.+)")


class WeightsError(ValueError):
    """A weights file, checkpoint or encoder config that cannot be loaded: one line naming the
    file (or config) and the problem."""


class UnsafeCheckpointError(WeightsError):
    """The checkpoint holds more than weights: loading it would execute code from the file."""


def weights_error(path: str | Path, problem: str, cls: type[WeightsError] = WeightsError) -> WeightsError:
    return cls(f"{one_line(path)}: {one_line(problem)}")


def regular_file_size(path: str | Path) -> int:
    """The size of `path`, which must be a regular file (a symlink to one is fine)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise weights_error(path, "no such file") from None
    except (OSError, ValueError) as err:  # ValueError: an embedded NUL; OSError: a link loop...
        raise weights_error(path, f"cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise weights_error(path, "not a regular file")
    return info.st_size


def parse_json(path: str | Path, text: str, what: str, *, limit: int = MAX_METADATA_JSON) -> Any:
    if len(text) > limit:
        raise weights_error(path, f"its {what} is {len(text)} characters long (limit {limit})")
    try:
        return json.loads(text)
    except RecursionError:
        raise weights_error(path, f"its {what} is nested too deeply") from None
    except ValueError as err:
        raise weights_error(path, f"its {what} is not valid JSON ({err})") from None


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorInfo:
        return cls(tensor.dtype, tuple(tensor.shape))


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def read_header(path: str | Path) -> SafetensorsHeader:
    """The checked header of a safetensors file; no tensor data is read."""
    size = regular_file_size(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise weights_error(path, f"too short for a safetensors file ({size} bytes)")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise weights_error(path, f"claims a {length}-byte header; the file has {size - 8} bytes "
                                      f"after the length (limit {MAX_HEADER_BYTES})")
        raw = f.read(length)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise weights_error(path, "its safetensors header is not UTF-8") from None
    header = parse_json(path, text, "safetensors header", limit=MAX_HEADER_BYTES)
    if not isinstance(header, dict):
        raise weights_error(path, "its safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise weights_error(path, "its safetensors metadata is not a mapping of strings")
    data_size = size - 8 - length
    return SafetensorsHeader(metadata, {name: _tensor_info(path, name, entry, data_size)
                                        for name, entry in header.items()})


def _tensor_info(path: str | Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    def bad(problem: str) -> WeightsError:
        return weights_error(path, f"tensor {name!r}: {problem}")

    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise bad(f"unknown dtype (known: {', '.join(DTYPES)})")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= 8
            and all(type(n) is int and n >= 0 for n in shape)):
        raise bad(f"bad shape {one_line(shape)[:60]}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise bad(f"data offsets {one_line(offsets)[:60]} outside the file's {data_size} data bytes")
    dtype = DTYPES[entry["dtype"]]
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise bad(f"{offsets[1] - offsets[0]} bytes do not hold a {entry['dtype']} tensor of shape {shape}")
    return TensorInfo(dtype, tuple(shape))


def metadata_json(path: str | Path, header: SafetensorsHeader, key: str) -> Any:
    """A JSON value stored under `key` in the header metadata (the adapter config, a head spec)."""
    if key not in header.metadata:
        raise weights_error(path, f"no {key!r} in the safetensors metadata")
    return parse_json(path, header.metadata[key], f"{key!r} metadata")


def expected_tensors(build: Callable[[], nn.Module]) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of the state dict `build()` would have, built on the meta
    device: no memory is allocated, whatever size the config names."""
    with torch.device("meta"):
        module = build()
    return {name: TensorInfo.of(value) for name, value in module.state_dict().items()}


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "integer"


def _names(names: list[str]) -> str:
    return f"{names[:5]}{'…' if len(names) > 5 else ''}"


def check_tensors(path: str | Path, found: Mapping[str, TensorInfo], wanted: Mapping[str, TensorInfo], *,
                  what: str = "weights", extra_allowed: bool = False) -> None:
    """`found` (a file's tensors) must supply every one of `wanted`, in its shape and kind of
    dtype (float, integer or bool: a float16 file loads into a float32 model); BatchNorm's
    `num_batches_tracked` counter, which older checkpoints lack, is not required."""
    missing = sorted(k for k in set(wanted) - set(found) if not k.endswith("num_batches_tracked"))
    if missing:
        raise weights_error(path, f"missing {what} {_names(missing)}")
    extra = sorted(set(found) - set(wanted))
    if extra and not extra_allowed:
        raise weights_error(path, f"unexpected tensors {_names(extra)}")
    for name in sorted(set(found) & set(wanted)):
        got, want = found[name], wanted[name]
        if got.shape != want.shape or _kind(got.dtype) != _kind(want.dtype):
            raise weights_error(path, f"tensor {name!r} is {str(got.dtype).removeprefix('torch.')} "
                                      f"{list(got.shape)}; the model wants "
                                      f"{str(want.dtype).removeprefix('torch.')} {list(want.shape)}")


def check_finite(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every tensor dense and on the CPU (a sparse or meta one supports few operations), every
    float tensor finite, and a normalisation's running variance >= 0 (a negative one is finite,
    but its square root makes every output NaN)."""
    for name, tensor in tensors.items():
        if tensor.layout != torch.strided or tensor.device.type != "cpu":
            raise weights_error(path, f"tensor {name!r} is not a dense CPU tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise weights_error(path, f"tensor {name!r} holds NaN or infinite values")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise weights_error(path, f"tensor {name!r} holds a negative variance")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The finite tensors of a safetensors file, after its header is checked."""
    read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise weights_error(path, f"unreadable safetensors data ({err})") from None
    check_finite(path, tensors)
    return tensors


def load_checked(path: str | Path, header: SafetensorsHeader, build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with the file's weights, after its header matched the model exactly."""
    check_tensors(path, header.tensors, expected_tensors(build))
    module = build()
    module.load_state_dict(load_tensors(path))
    return module.eval()


def load_torch_checkpoint(path: str | Path) -> Any:
    """The contents of a .pt/.th file (tensors, dicts, lists, numbers) on the CPU."""
    path = Path(path)
    size = regular_file_size(path)
    if zipfile.is_zipfile(path):
        _check_archive(path, size)
    else:
        _check_legacy(path, size)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UnsafeCheckpointError(_explain(path, str(err))) from None
        raise weights_error(path, f"not a readable PyTorch checkpoint ({err})") from None
    except Exception as err:  # noqa: BLE001 (any failure to parse a hostile file is its rejection)
        problem = one_line(f"{type(err).__name__}: {err}")[:200]
        raise weights_error(path, f"not a readable PyTorch checkpoint ({problem})") from None


def _check_archive(path: Path, size: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise weights_error(path, f"not a readable PyTorch checkpoint ({err})") from None
    if unpacked > size:
        raise weights_error(path, f"its archive unpacks to {unpacked} bytes from {size} "
                                  f"(torch.save stores weights uncompressed)")


class _Stub:
    """Whatever a legacy pickle names: nothing is imported or called (see _check_legacy)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle.Unpickler):
    """Unpickles with stubs in place of every global, summing the storage bytes declared."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.declared = 0

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:
        # legacy storage ids: ("storage", <type>Storage, key, location, numel, view)
        if isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[4], int):
            size = _ELEMENT_BYTES.get(getattr(pid[1], "__name__", ""), 8)
            self.declared += max(pid[4], 0) * size
        return _Stub()


_ELEMENT_BYTES = {"ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1, "HalfStorage": 2,
                  "BFloat16Storage": 2, "ShortStorage": 2, "IntStorage": 4, "FloatStorage": 4}


def _check_legacy(path: Path, size: int) -> None:
    """A legacy (pre-1.6, non-zip) checkpoint: magic, protocol, sys_info, then the object
    pickle, whose storage ids declare sizes torch allocates before reading them."""
    scan = _StorageScan(io.BytesIO(read_bounded(path, limit=size)))
    try:
        for _ in range(4):
            scan.load()
    except Exception:  # noqa: BLE001, S110 (not a legacy pickle: torch.load says what it is;
        return         # the stubs accept every operation torch's weights-only unpickler does)
    if scan.declared > size:
        raise weights_error(path, f"declares {scan.declared} bytes of storage in a {size}-byte file")


def _explain(path: Path, message: str) -> str:
    """Why torch's weights-only unpickler refused the file, in one sentence."""
    if found := _GLOBAL.search(message):
        what = f"unpickling it would call {found.group(1).rstrip('.,')}"
    elif found := _REFUSAL.search(message):
        what = f"it holds pickle instructions beyond plain weights ({found.group(1).strip()})"
    else:
        what = "it holds objects other than plain weights"
    return one_line(f"refusing to load {path}: {what}; only tensors and plain containers are allowed "
                    f"(convert the file to safetensors, or re-save just its state_dict)")
