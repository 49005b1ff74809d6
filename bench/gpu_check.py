"""The Python parts of bench/gpu_check.sh (run that script, not this file, on a GPU host).

    python bench/gpu_check.py throughput onnx intake --out DIR [--dry-run]
    python bench/gpu_check.py ddp --run DIR --world N --out DIR
    python bench/gpu_check.py tests --junit FILE --out DIR

throughput: shadow images per second of the real Mudjacking step (mudjack/patching/mudjacking.py:
bf16 autocast and channels_last weights on CUDA) on resnet20 at 32x32 and on a ViT-B/16-sized
random `hf_vision` encoder at 224x224. onnx: export encoder + head, then onnxruntime on its CUDA
provider against torch, with the batch-64 latency; where onnxruntime has no CUDA provider the
row fails with the reason and holds the CPU provider's numbers instead (never a silent pass).
intake: seconds a step of intake's soft fit (mudjack/intake/soft.py) takes with the encoder
placed on the GPU as intake places it (`intake.device: auto`, mudjack.features.placed), on the same
two encoders, and what one 200-step fit would cost. ddp and tests: summaries of the torchrun
worker's run.json and of pytest's JUnit XML. Each writes DIR/gpu_<part>.json; a failed part
does not stop the next one, and the exit status is non-zero if any failed. --dry-run: tiny
sizes on the CPU, to check the machinery where no GPU is. Only the throughput, onnx and intake
parts import mudjack (and torch's heavier modules), so the summaries start fast.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mudjack.io import write_json

if TYPE_CHECKING:
    from mudjack.encoders import EncoderAdapter

ROOT = Path(__file__).resolve().parents[1]
VIT_B16 = {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "intermediate_size": 3072, "image_size": 224, "patch_size": 16}
VIT_TINY = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "image_size": 32, "patch_size": 8}
# (batch, views per bug, timed steps, warm-up steps): a GPU run and a dry run
SIZES = {False: {"resnet20": (256, 8, 20, 3), "vit_b16": (64, 8, 10, 2)},
         True: {"resnet20": (4, 2, 1, 1), "vit_b16": (4, 2, 1, 1)}}
# intake's soft fit: (inputs, timed steps) on a GPU run and a dry run; params.yaml fits 64 for 200
FIT_SIZES = {False: (64, 20), True: (4, 2)}


def vit_adapter(dry_run: bool) -> EncoderAdapter:
    """A random hf_vision ViT built from a stored config (no folder, no weights to read)."""
    from mudjack.encoders import get_adapter

    model = VIT_TINY if dry_run else VIT_B16
    side = model["image_size"]
    return get_adapter("hf_vision", {"model": model, "input_shape": [side, side, 3], "mean": [0.5] * 3,
                                     "std": [0.5] * 3, "pooling": "cls"})


def encoders(dry_run: bool) -> dict[str, EncoderAdapter]:
    from mudjack.encoders import get_adapter

    return {"resnet20": get_adapter("resnet_cifar", {"depth": 20}), "vit_b16": vit_adapter(dry_run)}


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "python": platform.python_version(), "cuda": cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}


def device_for(dry_run: bool) -> torch.device:
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device; run with --dry-run to check the script on the CPU")
    return torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def patch_throughput(adapter: EncoderAdapter, device: torch.device, batch: int, views: int, steps: int,
                     warmup: int) -> dict[str, Any]:
    """Timed Mudjacking steps on random images with one bug (augmentation on)."""
    from mudjack.bugs import Bug
    from mudjack.patching.mudjacking import MudjackingParams, start_run
    from mudjack.triggers import patch_trigger

    torch.manual_seed(0)
    shape = adapter.input_shape
    rng = np.random.default_rng(0)
    shadow = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    trigger = patch_trigger(shape, max(2, shape[0] // 8), 0, 0)
    bug = Bug("gpu-check", "synthetic", 1, 0, shadow[0], shadow[1], trigger)
    params = MudjackingParams(device=device.type, batch_size=batch, views=views, clean_samples=batch)
    run = start_run(adapter.build(), adapter, shadow, [bug], params, seed=0)
    index = torch.arange(batch)
    for _ in range(warmup):
        run.step(index)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    terms = [run.step(index) for _ in range(steps)]
    synchronize(device)
    seconds = time.perf_counter() - start
    convs = [m for m in run.patched.modules() if isinstance(m, torch.nn.Conv2d)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"input_shape": list(shape), "batch_size": batch, "views": params.views, "steps": steps,
            "images_per_s": batch * steps / seconds, "step_ms": 1000 * seconds / steps,
            "bf16_autocast": device.type == "cuda",
            "channels_last": all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs),
            "final_loss": terms[-1]["loss"],
            "peak_gpu_gib": peak,
            "parameters": sum(p.numel() for p in run.patched.parameters())}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    device = device_for(args.dry_run)
    results = {name: patch_throughput(adapter, device, *SIZES[args.dry_run][name])
               for name, adapter in encoders(args.dry_run).items()}
    for name, row in results.items():
        print(f"gpu_check: {name} patch step: {row['images_per_s']:.1f} shadow images/s on {device}")
    return {"device": str(device), "results": results}


def intake_fit(adapter: EncoderAdapter, device: torch.device, samples: int, steps: int) -> dict[str, Any]:
    """Timed steps of intake's soft fit on random images, the encoder placed on `device` as intake
    places it (on the CPU it runs as it is), after a one-step fit to warm up."""
    from mudjack.features import placed
    from mudjack.intake.soft import SoftParams, soft_trigger

    torch.manual_seed(0)
    encoder = adapter.build().eval()
    if device.type != "cpu":
        encoder = placed(encoder, device)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (samples, *adapter.input_shape), dtype=np.uint8)

    def fit(steps: int) -> float:
        start = time.perf_counter()
        params = SoftParams(steps=steps, samples=samples)
        soft_trigger(encoder, adapter, clean[0], clean, params=params, seed=0)
        synchronize(device)
        return time.perf_counter() - start

    fit(1)
    seconds = fit(steps)
    return {"input_shape": list(adapter.input_shape), "samples": samples, "steps": steps,
            "step_ms": 1000 * seconds / steps, "fit_200_steps_s": 200 * seconds / steps}


def intake_check(args: argparse.Namespace) -> dict[str, Any]:
    device = device_for(args.dry_run)
    results = {name: intake_fit(adapter, device, *FIT_SIZES[args.dry_run])
               for name, adapter in encoders(args.dry_run).items()}
    for name, row in results.items():
        print(f"gpu_check: {name} intake soft-fit step: {row['step_ms']:.1f} ms on {device}")
    return {"device": str(device), "results": results}


def onnx_check(args: argparse.Namespace) -> dict[str, Any]:
    """Each encoder + an MLP head through export_onnx, then onnxruntime on CUDA against torch."""
    from mudjack.export import export_onnx
    from mudjack.heads import Classifier, Head

    device = device_for(args.dry_run)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, adapter in encoders(args.dry_run).items():
        torch.manual_seed(0)
        head = Head(adapter.feature_dim, 10, hidden=[512, 256], dropout=0.5)
        model = Classifier(adapter.build(), head).eval()
        pixels = torch.rand(9, *np.array(adapter.input_shape)[[2, 0, 1]])
        path = work / f"{name}.onnx"
        export_onnx(model, pixels[:2], path)
        results[name] = onnx_row(path, model.to(device), pixels, device)
        print(f"gpu_check: {name} onnx on {results[name]['providers'][0]}: "
              f"max_abs_diff {results[name]['max_abs_diff']:.2e}")
    return {"device": str(device), "onnxruntime_providers": ort_providers(), "results": results}


def ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def onnx_row(path: Path, model: torch.nn.Module, pixels: torch.Tensor,
             device: torch.device) -> dict[str, Any]:
    """Parity and batch-64 latency on the device's provider. Where onnxruntime has no CUDA
    provider (a CPU-only build) the row still measures the CPU provider against torch on the
    GPU, and fails with the reason: a CUDA check that silently ran on the CPU would be a lie."""
    from mudjack.export import CUDA_PROVIDER, ProviderError, verify_onnx

    try:
        check = verify_onnx(path, model, pixels, tolerance=1e-3, batch_size=8, device=device.type)
        row = {**check, "batch64_ms": session_latency(path, device, pixels)}
    except ProviderError as error:
        cpu = torch.device("cpu")
        check = verify_onnx(path, model, pixels, tolerance=1e-3, batch_size=8, device=cpu.type)
        row = {**check, "batch64_ms": session_latency(path, cpu, pixels), "passed": False,
               "error": f"ProviderError: {error}"}
    return {**row, "cuda_provider_used": row["providers"][0] == CUDA_PROVIDER}


def session_latency(path: Path, device: torch.device, pixels: torch.Tensor, repeats: int = 5) -> float:
    """Median ms of one batch-64 run on the session's first provider (after one warm-up)."""
    from mudjack.export import choose_providers, open_session

    session = open_session(path, choose_providers(device.type))
    feed = {session.get_inputs()[0].name: pixels[:1].repeat(64, 1, 1, 1).numpy()}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def ddp_summary(args: argparse.Namespace) -> dict[str, Any]:
    run = json.loads((Path(args.run) / "run.json").read_text())
    expected = "nccl" if torch.cuda.is_available() and not args.dry_run else "gloo"
    passed = run["world_size"] == args.world and run["backend"] == expected and run["steps"] > 0
    return {**run, "expected_backend": expected, "processes": args.world, "passed": passed}


def tests_summary(args: argparse.Namespace) -> dict[str, Any]:
    """Counts from pytest's JUnit XML; `passed` only when some CUDA test ran and none failed."""
    suites = ET.parse(args.junit).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    ran = counts["tests"] - counts["skipped"]
    return {**counts, "ran": ran, "passed": ran > 0 and counts["failures"] + counts["errors"] == 0}


PARTS = {"throughput": throughput, "onnx": onnx_check, "intake": intake_check, "ddp": ddp_summary,
         "tests": tests_summary}


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parse.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parse.add_argument("--work", default=str(ROOT / "bench" / ".cache" / "gpu_check"))
    parse.add_argument("--dry-run", action="store_true")
    parse.add_argument("--run", help="ddp: the torchrun worker's output folder")
    parse.add_argument("--world", type=int, default=1, help="ddp: the processes launched")
    parse.add_argument("--junit", help="tests: pytest's JUnit XML")
    return parse


def run_part(part: str, args: argparse.Namespace) -> bool:
    """Run one part and write OUT/gpu_<part>.json (the error, when it raised); True if it passed."""
    report: dict[str, Any] = {"part": part, "dry_run": args.dry_run, **environment()}
    try:
        report.update(PARTS[part](args))
    except Exception as error:  # the next part still runs; the script fails at the end
        traceback.print_exc()
        report.update(passed=False, error=f"{type(error).__name__}: {error}")
    write_json(Path(args.out) / f"gpu_{part}.json", report)
    return not any(row.get("passed") is False for row in [report, *report.get("results", {}).values()])


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references stay fp32 (bf16 is autocast's)
    torch.backends.cudnn.allow_tf32 = False
    failed = [part for part in args.parts if not run_part(part, args)]
    if failed:
        raise SystemExit(f"gpu_check: {', '.join(failed)} failed; see {args.out}/gpu_<part>.json")


if __name__ == "__main__":
    main()
