"""bench/gpu_check.sh: its CPU dry run (tiny sizes) must pass where no GPU is; the CUDA parts
are skipped with a message there, and run for real on a GPU host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _read(folder: Path, part: str) -> dict:
    return json.loads((folder / f"gpu_{part}.json").read_text())


def test_the_dry_run_checks_every_part_on_tiny_sizes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    command = ["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dry run: the CUDA-marked tests need a GPU; skipped" in done.stdout
    out = tmp_path / "out"
    throughput = _read(out, "throughput")
    assert throughput["dry_run"] and set(throughput["results"]) == {"resnet20", "vit_b16"}
    assert all(row["images_per_s"] > 0 for row in throughput["results"].values())
    assert throughput["results"]["resnet20"]["channels_last"]
    onnx = _read(out, "onnx")
    assert all(row["passed"] and row["batch_sizes"] == [1, 8] for row in onnx["results"].values())
    ddp = _read(out, "ddp")
    assert ddp["passed"] and (ddp["processes"], ddp["backend"]) == (2, "gloo")
    intake = _read(out, "intake")
    assert set(intake["results"]) == {"resnet20", "vit_b16"}
    assert all(row["step_ms"] > 0 and row["steps"] == 2 for row in intake["results"].values())
    assert sorted(p.name for p in out.iterdir()) == ["gpu_ddp.json", "gpu_intake.json", "gpu_onnx.json",
                                                     "gpu_throughput.json"]


def test_the_tests_part_counts_what_ran(tmp_path):
    import gpu_check

    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite tests="5" failures="0" errors="0" skipped="2"/></testsuites>')
    gpu_check.main(["tests", "--junit", str(junit), "--out", str(tmp_path)])
    assert (_read(tmp_path, "tests")["ran"], _read(tmp_path, "tests")["passed"]) == (3, True)
    junit.write_text('<testsuite tests="3" failures="0" errors="0" skipped="3"/>')  # nothing ran
    with pytest.raises(SystemExit, match="tests failed"):
        gpu_check.main(["tests", "--junit", str(junit), "--out", str(tmp_path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_a_real_run_without_cuda_fails_with_the_reason_recorded(tmp_path):
    import gpu_check

    with pytest.raises(SystemExit, match="throughput failed"):
        gpu_check.main(["throughput", "--out", str(tmp_path)])
    assert "no CUDA device" in _read(tmp_path, "throughput")["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where torch has none")
def test_an_onnxruntime_without_cuda_fails_the_row_but_still_measures_the_cpu(tmp_path):
    """A CPU-only onnxruntime on a GPU host (as the lent machine's image has): the row says why
    it failed and still holds the CPU provider's parity, not a silent CPU pass."""
    import gpu_check

    from mudjack.export import export_onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    pixels = torch.rand(9, 3, 2, 2)
    export_onnx(model, pixels[:2], tmp_path / "m.onnx")
    row = gpu_check.onnx_row(tmp_path / "m.onnx", model, pixels, torch.device("cuda"))
    assert not row["passed"] and row["error"].startswith("ProviderError")
    assert row["providers"] == ["CPUExecutionProvider"] and not row["cuda_provider_used"]
    assert row["max_abs_diff"] < 1e-5 and row["batch64_ms"] > 0
