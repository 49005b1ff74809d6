"""ONNX export: parity with a real onnxruntime session, dynamic batch, atomic writes, providers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxscript import ir
from torch import nn

from mudjack import export
from mudjack.config import ParamsError
from mudjack.export import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    ProviderError,
    choose_providers,
    describe_onnx,
    export_onnx,
    open_session,
    save_checked,
    verify_onnx,
)
from tests.helpers import run_if

IMAGE_SHAPE = (3, 8, 8)
EMBED_DIM = 16
TOLERANCE = 1e-4


class TinyCNN(nn.Module):
    """conv + BN + ReLU + pool + linear: the shape of a small image encoder."""

    def __init__(self, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class NormMLPHead(nn.Module):
    """L2-normalise the embedding, then a two-layer MLP classifier."""

    def __init__(self, dim: int = EMBED_DIM, classes: int = 5) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(nn.functional.normalize(z, dim=1))


class DataDependentBranch(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def _cnn() -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial BN statistics so the folded BN is really tested
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _head() -> NormMLPHead:
    torch.manual_seed(1)
    return NormMLPHead().eval()


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


def _embeddings(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, EMBED_DIM), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyCNN, Path]:
    model, path = _cnn(), tmp_path_factory.mktemp("cnn") / "encoder.onnx"
    export_onnx(model, _pixels(2), path)
    return model, path


@pytest.fixture(scope="module")
def head_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[NormMLPHead, Path]:
    # Export example of batch 1: the batch dimension must still come out symbolic.
    model, path = _head().train(), tmp_path_factory.mktemp("head") / "head.onnx"
    export_onnx(model, _embeddings(1), path, input_name="embedding")
    assert model.training, "export_onnx must restore the caller's training mode"
    return model.eval(), path


def _ort_vs_torch(session: ort.InferenceSession, model: nn.Module, x: torch.Tensor) -> float:
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = model(x).numpy()
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cnn_parity_per_batch_size(cnn_onnx: tuple[TinyCNN, Path], batch: int) -> None:
    model, path = cnn_onnx
    session = open_session(path, [CPU_PROVIDER])
    assert _ort_vs_torch(session, model, _pixels(batch, seed=batch)) <= TOLERANCE


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_head_parity_per_batch_size(head_onnx: tuple[NormMLPHead, Path], batch: int) -> None:
    model, path = head_onnx
    session = open_session(path, [CPU_PROVIDER])
    assert _ort_vs_torch(session, model, _embeddings(batch, seed=batch)) <= TOLERANCE


def test_verify_onnx_reports_parity_and_cpu_provider(cnn_onnx: tuple[TinyCNN, Path]) -> None:
    model, path = cnn_onnx
    report = verify_onnx(path, model, _pixels(72), tolerance=TOLERANCE, batch_size=64)
    assert report["passed"] and report["max_abs_diff"] <= TOLERANCE
    assert report["n_inputs"] == 72
    assert report["batch_sizes"] == [1, 7, 64]
    assert CPU_PROVIDER in report["providers"]
    if not torch.cuda.is_available():
        assert report["providers"][0] == CPU_PROVIDER


def test_verify_onnx_fails_on_a_different_model(head_onnx: tuple[NormMLPHead, Path]) -> None:
    _, path = head_onnx
    other = NormMLPHead().eval()  # fresh random weights
    report = verify_onnx(path, other, _embeddings(10), tolerance=TOLERANCE, device="cpu")
    assert not report["passed"] and report["max_abs_diff"] > TOLERANCE


def test_verify_onnx_leaves_training_mode_alone(head_onnx: tuple[NormMLPHead, Path]) -> None:
    model, path = head_onnx
    model.train()
    try:
        assert verify_onnx(path, model, _embeddings(5), tolerance=TOLERANCE)["passed"]
        assert model.training
    finally:
        model.eval()


def test_choose_providers_on_this_host() -> None:
    assert choose_providers("cpu") == [CPU_PROVIDER]
    cuda = CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available()
    assert choose_providers() == ([CUDA_PROVIDER, CPU_PROVIDER] if cuda else [CPU_PROVIDER])
    with pytest.raises(ValueError, match="device"):
        choose_providers("tpu")


def test_choose_providers_ignores_cuda_listed_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime-gpu on a GPU-less host lists CUDA anyway.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_providers() == [CPU_PROVIDER]
    with pytest.raises(ProviderError, match="is_available"):
        choose_providers("cuda")


def test_silent_provider_fallback_is_an_error(
    head_onnx: tuple[NormMLPHead, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = head_onnx
    if CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("CUDA really works here: no fallback to provoke")
    # Ask for CUDA anyway, as a GPU-less onnxruntime-gpu host would; the session drops it.
    monkeypatch.setattr(export, "choose_providers", lambda device: [CUDA_PROVIDER, CPU_PROVIDER])
    with warnings.catch_warnings(), pytest.raises(ProviderError, match=CUDA_PROVIDER):
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's "not available" notice
        verify_onnx(path, model, _embeddings(4), tolerance=TOLERANCE)


def test_describe_onnx(cnn_onnx: tuple[TinyCNN, Path], head_onnx: tuple[NormMLPHead, Path]) -> None:
    _, path = cnn_onnx
    info = describe_onnx(path)
    assert info["opset"] == 18
    assert info["size_bytes"] == path.stat().st_size > 0
    assert len(info["sha256"]) == 64
    assert info["external_data"] == []
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["name"] == "pixels" and inp["dtype"] == "float32"
    assert isinstance(inp["shape"][0], str) and inp["shape"][1:] == list(IMAGE_SHAPE)
    assert out["name"] == "logits" and out["shape"] == [inp["shape"][0], EMBED_DIM]
    head = describe_onnx(head_onnx[1])
    assert head["inputs"][0]["name"] == "embedding"
    assert isinstance(head["inputs"][0]["shape"][0], str)  # exported from a batch of 1


def test_export_is_a_single_file_with_no_leftovers(cnn_onnx: tuple[TinyCNN, Path]) -> None:
    _, path = cnn_onnx
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    model = onnx.load(str(path))  # loads with weights inside
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_export_holds_no_local_paths(cnn_onnx: tuple[TinyCNN, Path]) -> None:
    # Stack traces would embed this file's and the venv's absolute paths into the artifact.
    data = cnn_onnx[1].read_bytes()
    assert str(Path(__file__).resolve().parent).encode() not in data
    assert b"site-packages" not in data


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "bad.onnx"
    with pytest.raises(torch.onnx.OnnxExporterError):
        export_onnx(DataDependentBranch(), _pixels(2), dest)
    assert list(tmp_path.iterdir()) == []


def test_checker_failure_keeps_old_file(
    tmp_path: Path, head_onnx: tuple[NormMLPHead, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "head.onnx"
    dest.write_bytes(b"previous version")

    def reject(*_args: object, **_kwargs: object) -> None:
        raise onnx.checker.ValidationError("rejected by test")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(onnx.checker.ValidationError):
        save_checked(ir.load(head_onnx[1]), dest)
    assert dest.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["head.onnx"]


def test_external_data_path_when_weights_are_too_big(
    tmp_path: Path, head_onnx: tuple[NormMLPHead, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = head_onnx
    monkeypatch.setattr(export, "SINGLE_FILE_LIMIT_BYTES", 0)  # pretend the weights exceed 2 GiB
    dest = tmp_path / "big.onnx"
    save_checked(ir.load(path), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert [e["location"] for e in describe_onnx(dest)["external_data"]] == ["big.onnx.data"]
    assert verify_onnx(dest, model, _embeddings(9), tolerance=TOLERANCE)["passed"]


@run_if(gpu=True)
def test_cuda_provider_parity(cnn_onnx: tuple[TinyCNN, Path]) -> None:
    if CUDA_PROVIDER not in ort.get_available_providers():
        pytest.skip(f"onnxruntime lists no {CUDA_PROVIDER} (CPU build installed)")
    _, path = cnn_onnx
    gpu_model = _cnn().cuda()
    report = verify_onnx(path, gpu_model, _pixels(72), tolerance=1e-3, batch_size=64, device="cuda")
    assert report["providers"][0] == CUDA_PROVIDER
    assert report["passed"], report


def test_an_opset_the_exporter_cannot_write_is_a_params_error_leaving_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "head.onnx"
    with pytest.raises(ParamsError, match="export.opset: the ONNX exporter cannot write opset 99"):
        export_onnx(_head(), _embeddings(1), dest, input_name="embedding", opset=99)
    assert list(tmp_path.iterdir()) == []
