"""Benchmark (not a test): onnxruntime vs PyTorch eager latency of one exported model, on CPU.

    .venv/bin/python bench/onnx_latency.py --demo
    .venv/bin/python bench/onnx_latency.py --demo --onnx some.onnx --batch-sizes 1,64,256
    .venv/bin/python bench/onnx_latency.py --workspace runs/resnet20-gtsrb --task gtsrb

--workspace takes a pipeline's exported model (models/onnx/TASK.onnx) and the patched
encoder + head it was exported from (an image task). For other models, call
`main(model_factory=...)` with a function that builds the PyTorch module holding the same
weights as the .onnx passed with --onnx (exported on the fly otherwise).
Both runtimes get the same thread count; medians of `--repeats` timed runs after warm-up.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from mudjack.export import CPU_PROVIDER, describe_onnx, export_onnx, open_session
from mudjack.io import write_json

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "onnx_latency.json"
DEFAULT_THREADS = min(2, os.cpu_count() or 1)
DEMO_INPUT_SHAPE = (3, 32, 32)
WARMUP_SECONDS = 0.5


# --------------------------------------------------------------------------- measurement


def measure_latency(
    model: nn.Module,
    onnx_path: str | Path,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 100,
    warmup: int = 10,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """Median latency (ms) per batch size for torch eager and onnxruntime, same thread count."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    session = open_session(onnx_path, [CPU_PROVIDER], intra_op_threads=threads)
    was_training = model.training
    model.eval()
    try:
        rows = [
            _measure_batch(model, session, input_shape, b, repeats, warmup) for b in batch_sizes
        ]
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    return {
        "threads": {"torch": threads, "onnxruntime_intra_op": threads},
        "providers": session.get_providers(),
        "input_shape": list(input_shape),
        "repeats": repeats,
        "warmup": warmup,
        "results": rows,
    }


def _measure_batch(
    model: nn.Module,
    session: ort.InferenceSession,
    input_shape: Sequence[int],
    batch: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    x = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(batch))
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        (torch_ms, torch_p90), (onnx_ms, onnx_p90) = _paired_timings_ms(
            [lambda: model(x), lambda: session.run(None, feed)], repeats, warmup
        )
        expected = model(x).numpy()
    got = session.run(None, feed)[0]
    return {
        "batch_size": batch,
        "torch_ms": torch_ms,
        "onnx_ms": onnx_ms,
        "ratio_onnx_over_torch": onnx_ms / torch_ms,
        "torch_ms_p90": torch_p90,  # a p90 far above the median means a noisy (shared) host
        "onnx_ms_p90": onnx_p90,
        "max_abs_diff": float(np.abs(got - expected).max()),  # sanity: same model on both sides
    }


def _paired_timings_ms(
    fns: Sequence[Callable[[], object]], repeats: int, warmup: int
) -> list[tuple[float, float]]:
    """(median, p90) ms per function; runs alternate so load drifts hit every function alike."""
    # Warm up by count and by time: oneDNN primitives, allocator and thread pools settle first.
    deadline = time.perf_counter() + WARMUP_SECONDS
    for i in itertools.count():
        if i >= warmup and time.perf_counter() >= deadline:
            break
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [_median_p90_ms(bucket) for bucket in times]


def _median_p90_ms(seconds: list[float]) -> tuple[float, float]:
    p90 = statistics.quantiles(seconds, n=10)[-1] if len(seconds) > 1 else seconds[0]
    return statistics.median(seconds) * 1000.0, p90 * 1000.0


# --------------------------------------------------------------------------- demo model


class DemoEncoder(nn.Module):
    """conv + BN + ReLU + pool + linear, as in tests/test_export.py."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(x)


class DemoHead(nn.Module):
    """L2-normalise, then a two-layer MLP."""

    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(nn.functional.normalize(z, dim=1))


def demo_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(DemoEncoder(), DemoHead()).eval()


def workspace_model(workspace: Path, task: str) -> tuple[Callable[[], nn.Module], Path]:
    """The patched encoder + head of a pipeline run, and the ONNX file exported from them."""
    from mudjack.encoders import load_encoder
    from mudjack.heads import Classifier, load_head
    from stages.artifacts import HEADS, ONNX_DIR, PATCHED_ENCODER

    onnx_path = workspace / ONNX_DIR / f"{task}.onnx"
    if not onnx_path.exists():
        raise SystemExit(f"no {onnx_path}: run the pipeline's export stage first")

    def factory() -> nn.Module:
        encoder, adapter = load_encoder(workspace / PATCHED_ENCODER)
        if adapter.modality != "image":
            raise SystemExit("--workspace benchmarks image models (pixels in, logits out)")
        return Classifier(encoder, load_head(workspace / HEADS / task / "patched.safetensors")).eval()

    return factory, onnx_path


# --------------------------------------------------------------------------- command line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="benchmark a tiny built-in encoder+head")
    p.add_argument("--workspace", type=Path, help="a pipeline run's folder (runs/NAME or .)")
    p.add_argument("--task", help="with --workspace: the task whose exported model to time")
    p.add_argument("--onnx", type=Path, help="exported model (default: export to a temp dir)")
    p.add_argument("--input-shape", type=_ints, help="per-sample shape C,H,W (default: from ONNX)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 64))
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--out", type=Path, default=RESULTS_PATH)
    return p


def _input_shape(args: argparse.Namespace, onnx_path: Path | None) -> tuple[int, ...] | None:
    if args.input_shape:
        return args.input_shape
    if onnx_path is None:
        return DEMO_INPUT_SHAPE if args.demo else None
    shape = describe_onnx(onnx_path)["inputs"][0]["shape"][1:]
    if not all(isinstance(d, int) for d in shape):
        raise SystemExit(f"non-static per-sample shape {shape} in {onnx_path}: pass --input-shape")
    return tuple(shape)


def _print_table(report: dict[str, Any]) -> None:
    print(f"providers={report['providers']} threads={report['threads']['torch']}")
    print(f"input_shape={report['input_shape']} repeats={report['repeats']}")
    print(f"host={report['host']}")
    header = ("batch", "torch ms", "onnx ms", "onnx/torch", "torch p90", "onnx p90", "max|diff|")
    print("".join(f"{h:>11}" for h in header))
    for row in report["results"]:
        print(
            f"{row['batch_size']:>11} {row['torch_ms']:>10.3f} {row['onnx_ms']:>10.3f} "
            f"{row['ratio_onnx_over_torch']:>10.2f} {row['torch_ms_p90']:>10.3f} "
            f"{row['onnx_ms_p90']:>10.3f} {row['max_abs_diff']:>10.2e}"
        )
        if row["max_abs_diff"] > 1e-3:
            print(f"  warning: outputs differ at batch {row['batch_size']}: is --onnx this model?")


def main(
    argv: Sequence[str] | None = None, model_factory: Callable[[], nn.Module] | None = None
) -> dict[str, Any]:
    parser = _parser()
    args = parser.parse_args(argv)
    factory = demo_model if args.demo else model_factory
    if args.workspace is not None:
        if not args.task:
            parser.error("--workspace needs --task")
        factory, args.onnx = workspace_model(args.workspace, args.task)
    if factory is None:
        parser.error("pass --demo, or call main(model_factory=...) from Python")
    shape = _input_shape(args, args.onnx)
    if shape is None:
        parser.error("--input-shape is needed to export a model without --onnx")
    model = factory()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or Path(tmp) / "model.onnx"
        if args.onnx is None:
            export_onnx(model, torch.rand((2, *shape)), onnx_path)
        report = measure_latency(
            model, onnx_path, shape, args.batch_sizes, args.repeats, args.warmup, args.threads
        )
        report["onnx"] = {k: describe_onnx(onnx_path)[k] for k in ("sha256", "size_bytes", "opset")}
    report["host"] = _host()
    _print_table(report)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


def _host() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        # Other processes competing for the cores skew eager torch most (OpenMP barriers).
        "load_average_1m": f"{os.getloadavg()[0]:.2f}",
    }


if __name__ == "__main__":
    main()
