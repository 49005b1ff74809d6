"""A tiny real DVC repo (three trivial stages a -> b -> c), a copy of the real project on tiny
settings, and a temporary Prefect server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

# Prefect reads its settings when first imported, so its home (and DVC's site cache) must
# point at a throwaway folder before any test module imports pipeline.flow.
_SCRATCH = Path(tempfile.mkdtemp(prefix="mudjack-pipeline-tests-"))
os.environ["PREFECT_HOME"] = str(_SCRATCH / "prefect")
os.environ["DVC_SITE_CACHE_DIR"] = str(_SCRATCH / "dvc_site_cache")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parents[2]
# The real dvc.yaml on tiny settings: the whole pipeline in about a minute on 2 cores. A foundation
# of 4 epochs was too weak to keep the clean-accuracy check stable across machines (a drop of 0.082
# against 0.031 with 8 epochs, on the same code and seed).
TINY = {
    "foundation": {"config": {"width": 8, "feature_dim": 32}, "epochs": 8},
    "attack": {"epochs": 12, "deployed_head": {"epochs": 40}},
    "patch": {"epochs": 8},
    "retrain": {"epochs": 40},
}
PROJECT_FILES = ("dvc.yaml", "artifacts.yaml")

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


def make_repo(root: Path, dvc_yaml: str = DVC_YAML, *, git: bool = True) -> Path:
    """A git + DVC repo (DVC only without `git`) at `root` with step.py, params.yaml and
    `dvc_yaml`."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    # In-process `dvc init` + `dvc config core.analytics false`: a DVC subprocess costs ~1 s.
    with Repo.init(str(root), no_scm=not git) as repo, repo.config.edit() as config:
        config["core"]["analytics"] = False
    (root / "src").mkdir()
    (root / "src" / "x.txt").write_text("x")
    (root / "step.py").write_text(STEP_PY)
    (root / "params.yaml").write_text(PARAMS_YAML)
    (root / "dvc.yaml").write_text(dvc_yaml)
    return root


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


def copy_project(root: Path, extra: dict | None = None, commit: bool = False) -> Path:
    """A copy of the project (code, dvc.yaml, artifacts.yaml, params.yaml with TINY and then
    `extra` merged in) in a fresh git + DVC repo; `commit` commits it, as a checkout would be."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    for name in ("mudjack", "stages", "pipeline"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in PROJECT_FILES:
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, root / name)
    params = merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY), extra or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    with Repo.init(str(root)) as repo, repo.config.edit() as config:
        config["core"]["analytics"] = False
    if commit:
        subprocess.run(["git", "add", "."], cwd=root, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit",
                        "-q", "-m", "project"], cwd=root, check=True)
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
def nogit_repo(tmp_path: Path) -> Path:
    """The same three stages in a DVC project without git (`dvc init --no-scm`)."""
    return make_repo(tmp_path / "nogit", git=False)


@pytest.fixture(scope="session")
def project_copy() -> Callable[..., Path]:
    """`copy_project(root, extra=None, commit=False)`: the real project on tiny settings."""
    return copy_project


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


class _Receiver(BaseHTTPRequestHandler):
    """Records each POSTed JSON body in `self.server.received`; answers 500 on /broken."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "type": self.headers["Content-Type"],
                                     "json": json.loads(body)})
        self.send_response(500 if self.path == "/broken" else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on 127.0.0.1: (its base URL, the requests it got)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def receiver_factory() -> Callable[[], AbstractContextManager[tuple[str, list[dict]]]]:
    return webhook_receiver


@pytest.fixture(scope="session", autouse=True)
def _remove_scratch() -> Iterator[None]:
    yield
    shutil.rmtree(_SCRATCH, ignore_errors=True)
