"""The GPU image's Dockerfile: hadolint-clean, CUDA base, onnxruntime-gpu only, non-root, `mudjack`.

The image itself is not built here: there is no Docker engine on this machine or in CI."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import HADOLINT, run_if

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@run_if(hadolint=True)
def test_hadolint_passes() -> None:
    proc = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_runtime_non_root_and_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM nvidia/cuda:[\w.-]*runtime", text, re.M)
    assert "onnxruntime-gpu==" in text
    assert not re.search(r"onnxruntime(?!-gpu)[=\s\"]", code)  # never the CPU build as well
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["mudjack"\]', text, re.M)
