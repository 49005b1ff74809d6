"""ONNX export of encoder+head modules: dynamo export, atomic checked write, onnxruntime parity."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxscript import ir

from mudjack.config import ParamsError
from mudjack.io import atomic_path, sha256_file

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
BATCH_DIM = "batch"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
# A protobuf file cannot exceed 2 GiB; above this weight size the weights go to a .data file.
SINGLE_FILE_LIMIT_BYTES = 1536 * 1024 * 1024


class ProviderError(RuntimeError):
    """The requested onnxruntime execution provider is not available or was dropped."""


# --------------------------------------------------------------------------- export


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int = 18,
    input_name: str = "pixels",
    output_name: str = "logits",
) -> None:
    """Export `model` (eval mode, dynamic batch) to one checked .onnx file, written atomically."""
    export_onnx_inputs(model, (example,), path, opset=opset, input_names=[input_name],
                       dynamic_shapes=({0: BATCH_DIM},), output_name=output_name)


def export_onnx_inputs(
    model: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    *,
    opset: int,
    input_names: list[str],
    dynamic_shapes: tuple[dict[int, str], ...],
    output_name: str = "logits",
) -> None:
    """`export_onnx` for a model of several inputs, each with its own named dynamic dimensions
    (a text model: input_ids and attention_mask, both dynamic in batch and sequence)."""
    program = _dynamo_export(model, examples, opset=opset, input_names=input_names, output_name=output_name,
                             dynamic_shapes=dynamic_shapes)
    _check_opset(program.model, opset)
    _strip_stack_traces(program.model)
    save_checked(program.model, Path(path))


def _dynamo_export(
    model: torch.nn.Module, examples: tuple[torch.Tensor, ...], *, opset: int, input_names: list[str],
    output_name: str, dynamic_shapes: tuple[dict[int, str], ...],
) -> torch.onnx.ONNXProgram:
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                examples,
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=[output_name],
                # Tuple form: positional, so the forward() argument names do not matter.
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    finally:
        model.train(was_training)
    assert program is not None  # dynamo=True always returns an ONNXProgram
    return program


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter chatter (torchvision-missing notices, deprecation warnings); keep errors."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # several inputs sharing a dynamic axis name: the exporter keeps one name, and says so
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_opset(model: ir.Model, opset: int) -> None:
    # Below its native opset the exporter down-converts, and keeps the native one if that fails.
    got = model.opset_imports.get("")
    if got != opset:
        raise ParamsError(f"export.opset: the ONNX exporter cannot write opset {opset} for this model "
                          f"(it produced {got}); use {got}")


def _strip_stack_traces(model: ir.Model) -> None:
    """Drop per-node Python stack traces: they hold absolute source paths (checkout, venv),
    which would make the file's sha256 depend on where the code lives."""
    for owner in (model.graph, *model.functions.values()):
        for node in owner.all_nodes():
            node.metadata_props.pop(STACK_TRACE_KEY, None)


def save_checked(model: ir.Model, path: Path) -> None:
    """Write `model` to `path` only after `onnx.checker` accepts it; nothing lands on failure."""
    path = Path(path)
    if _initializer_bytes(model) <= SINGLE_FILE_LIMIT_BYTES:
        with atomic_path(path) as tmp:
            ir.save(model, tmp, format="protobuf")
            onnx.checker.check_model(str(tmp))
    else:
        _save_with_external_data(model, path)


def _initializer_bytes(model: ir.Model) -> int:
    values = model.graph.initializers.values()
    return sum(v.const_value.nbytes for v in values if v.const_value is not None)


def _save_with_external_data(model: ir.Model, path: Path) -> None:
    """Stage `<name>` and `<name>.data` in a sibling temp dir, check, move data, then model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = f"{path.name}.data"
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp_dir:
        staged = Path(tmp_dir) / path.name
        ir.save(model, staged, format="protobuf", external_data=data_name)
        onnx.checker.check_model(str(staged))  # path form: the checker resolves external data
        os.replace(staged.parent / data_name, path.parent / data_name)
        os.replace(staged, path)


# --------------------------------------------------------------------------- runtime


def choose_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers, best first: CUDA only if onnxruntime lists it and torch sees a GPU.

    onnxruntime-gpu lists CUDAExecutionProvider even on hosts without a GPU, hence the torch check.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    if CUDA_PROVIDER in available and torch.cuda.is_available():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise ProviderError(
            f"device='cuda' needs {CUDA_PROVIDER} and a GPU: onnxruntime lists {available}, "
            f"torch.cuda.is_available()={torch.cuda.is_available()}"
        )
    return [CPU_PROVIDER]


def open_session(
    path: str | Path, providers: list[str], intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """An InferenceSession that is guaranteed to run on `providers[0]` (no silent CPU fallback)."""
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if providers[0] not in session.get_providers():
        raise ProviderError(
            f"requested {providers[0]} but the session runs on {session.get_providers()} "
            "(onnxruntime fell back; check the CUDA/cuDNN libraries onnxruntime-gpu needs)"
        )
    return session


def verify_onnx(
    path: str | Path,
    model: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    tolerance: float,
    batch_size: int = 256,
    device: str = "auto",
) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on `inputs`, batch by batch.

    The first batch has size 1 and the rest `batch_size` (plus a remainder), so at least two
    batch sizes run whenever len(inputs) >= 3: a real check of the dynamic batch dimension.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    session = open_session(path, choose_providers(device))
    sizes = _batch_sizes(len(inputs), batch_size)
    diffs = [_batch_diff(session, model, chunk) for chunk in torch.split(inputs, sizes)]
    max_abs_diff = float(np.max(diffs)) if diffs else 0.0  # np.max keeps NaN, builtin max drops it
    return {
        "max_abs_diff": max_abs_diff,
        "providers": session.get_providers(),
        "n_inputs": len(inputs),
        "batch_sizes": sorted(set(sizes)),
        "passed": bool(max_abs_diff <= tolerance),
    }


def verify_onnx_batches(
    path: str | Path,
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    *,
    tolerance: float,
    device: str = "auto",
) -> dict[str, Any]:
    """`verify_onnx` for a model of several inputs: each batch is a tuple of the graph's inputs
    in order; give batches of several sizes (and sequence lengths) to check dynamic axes."""
    session = open_session(path, choose_providers(device))
    names = [i.name for i in session.get_inputs()]
    diffs = []
    for batch in batches:
        expected = _torch_outputs(model, *batch)
        got = session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, batch, strict=True)})[0]
        if got.shape != expected.shape:
            raise ValueError(f"onnxruntime output shape {got.shape} != torch {expected.shape}")
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))))
    max_abs_diff = float(np.max(diffs)) if diffs else 0.0
    return {
        "max_abs_diff": max_abs_diff,
        "providers": session.get_providers(),
        "n_inputs": sum(len(b[0]) for b in batches),
        "batch_sizes": sorted({len(b[0]) for b in batches}),
        "sequence_lengths": sorted({b[0].shape[1] for b in batches if b[0].ndim > 1}),
        "passed": bool(max_abs_diff <= tolerance),
    }


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    if n <= 1:
        return [n] if n else []
    full, tail = divmod(n - 1, batch_size)
    return [1] + [batch_size] * full + ([tail] if tail else [])


def _batch_diff(
    session: ort.InferenceSession, model: torch.nn.Module, chunk: torch.Tensor
) -> float:
    expected = _torch_outputs(model, chunk)
    input_name = session.get_inputs()[0].name
    got = session.run(None, {input_name: chunk.detach().cpu().numpy()})[0]
    if got.shape != expected.shape:
        raise ValueError(f"onnxruntime output shape {got.shape} != torch {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def _torch_outputs(model: torch.nn.Module, *chunks: torch.Tensor) -> np.ndarray:
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(*(chunk.to(device) for chunk in chunks)).cpu().numpy()
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- description


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """sha256, size, default-domain opset, graph inputs/outputs and any external data files."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "opset": _default_opset(proto),
        "inputs": [_describe_value(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [_describe_value(v) for v in proto.graph.output],
        "external_data": _describe_external_data(proto, path.parent),
    }


def _default_opset(proto: onnx.ModelProto) -> int | None:
    versions = [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")]
    return versions[0] if versions else None


def _describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "shape": [_describe_dim(d) for d in tensor.shape.dim],
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
    }


def _describe_dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None  # unknown and unnamed


def _describe_external_data(proto: onnx.ModelProto, folder: Path) -> list[dict[str, Any]]:
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [
        {
            "location": loc,
            "sha256": sha256_file(folder / loc),
            "size_bytes": (folder / loc).stat().st_size,
        }
        for loc in sorted(locations)
    ]
