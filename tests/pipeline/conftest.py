"""A tiny real DVC repo (three trivial stages a -> b -> c) and a temporary Prefect server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Prefect reads its settings when first imported, so its home (and DVC's site cache) must
# point at a throwaway folder before any test module imports pipeline.flow.
_SCRATCH = Path(tempfile.mkdtemp(prefix="mudjack-pipeline-tests-"))
os.environ["PREFECT_HOME"] = str(_SCRATCH / "prefect")
os.environ["DVC_SITE_CACHE_DIR"] = str(_SCRATCH / "dvc_site_cache")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Each stage appends its name to runs.log (not tracked by DVC), so tests can count runs.
STEP_PY = textwrap.dedent(
    """\
    import json, pathlib, sys
    import yaml

    name, src, dst = sys.argv[1:4]
    text = pathlib.Path(src).read_text() + name
    if name == "b":
        text += str(yaml.safe_load(open("params.yaml"))["b"]["factor"])
    pathlib.Path(dst).write_text(text)
    with open("runs.log", "a") as log:
        log.write(name + "\\n")
    if name == "c":
        side = {"clean_acc": 0.9, "asr": 0.95, "tba": 0.05}
        fixed = {"clean_acc": 0.89, "asr": 0.01, "tba": 0.88}
        metrics = {
            "tasks": {"digits": {"backdoored": side, "patched": fixed}},
            "export": {"max_abs_diff": 1e-6},
            "patch": {"seconds": 1.5},
        }
        pathlib.Path("reports").mkdir(exist_ok=True)
        pathlib.Path("reports/metrics.json").write_text(json.dumps(metrics))
    """
)

PARAMS_YAML = """\
paths:
  x: src/x.txt
b:
  factor: 2
"""

# Listed out of order on purpose: the order must come from deps -> outs, not the file.
DVC_YAML = """\
stages:
  c:
    cmd: python step.py c b.txt c.txt
    deps: [step.py, b.txt]
    outs: [c.txt]
    metrics:
      - reports/metrics.json:
          cache: false
  b:
    cmd: python step.py b a.txt b.txt
    deps: [step.py, a.txt]
    params: [b.factor]
    outs: [b.txt]
  a:
    cmd: python step.py a ${paths.x} a.txt
    deps: [step.py, "${paths.x}"]
    outs: [a.txt]
"""


def make_repo(root: Path, dvc_yaml: str = DVC_YAML) -> Path:
    """A git + DVC repo at `root` with step.py, params.yaml and `dvc_yaml`."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    # In-process `dvc init` + `dvc config core.analytics false`: a DVC subprocess costs ~1 s.
    with Repo.init(str(root)) as repo, repo.config.edit() as config:
        config["core"]["analytics"] = False
    (root / "src").mkdir()
    (root / "src" / "x.txt").write_text("x")
    (root / "step.py").write_text(STEP_PY)
    (root / "params.yaml").write_text(PARAMS_YAML)
    (root / "dvc.yaml").write_text(dvc_yaml)
    return root


def runs(root: Path) -> list[str]:
    """Stage names in the order they ran, from runs.log."""
    log = root / "runs.log"
    return log.read_text().split() if log.exists() else []


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """The three-stage repo a -> b -> c, nothing run yet."""
    return make_repo(tmp_path / "repo")


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[[str], Path]:
    """Build a repo with a custom dvc.yaml (same step.py and params.yaml)."""
    return lambda dvc_yaml: make_repo(tmp_path / "custom", dvc_yaml)


@pytest.fixture
def run_log() -> Callable[[Path], list[str]]:
    """Read which stages ran, in order, in a repo."""
    return runs


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect API server and database (10-20 s to start on a small machine)."""
    from prefect.testing.utilities import prefect_test_harness

    # None: use PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (120 s) rather than 30 s.
    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture(scope="session", autouse=True)
def _remove_scratch() -> Iterator[None]:
    yield
    shutil.rmtree(_SCRATCH, ignore_errors=True)
