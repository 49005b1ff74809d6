"""Scheduled repair end to end, as operations run it.

A real Prefect server on 127.0.0.1 (its own PREFECT_HOME), `mudjack serve` serving the flow on
a cron schedule in a background process, runs triggered through the API, a webhook receiver on
127.0.0.1, the real dvc.yaml on a tiny copy of the project, a local DVC remote and GTO tags.
Run 1 promotes; run 2 picks up a new report from the inbox but fails a gate: nothing promoted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.dag import run_dvc
from pipeline.flow import DEPLOYMENT_NAME, FLOW_NAME, GATES_KEY, REPORT_KEY
from pipeline.notify import FAILURE_KEY, OUTCOME_KEY
from pipeline.promote import ARTIFACT, prod_version, versions
from stages.artifacts import INTAKE_LOG

CRON = "0 3 1 1 *"  # never due during the test: runs are triggered through the API
# The tiny encoder of the test loses more clean accuracy in the repair than the default one
# (0.07 where the default loses none): its gate is looser; the ASR gate is the default's.
GATES = {"gates": {"max_clean_acc_drop": 0.15}}


def deploy_scenario(project: Path) -> None:
    """Build the deployed model with the scenario stages, then, as in production, take clients'
    reports from a folder no stage writes (`client-inbox`, seeded with the scenario's)."""
    run_dvc([sys.executable, "-m", "dvc", "repro", "attack"], cwd=project)
    shutil.copytree(project / "inbox", project / "client-inbox")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["paths"]["inbox"] = "client-inbox"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on 127.0.0.1, a free port, its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed below)
    # `mudjack server` runs `prefect server start --host 127.0.0.1 --port <port>`.
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "server", "--port", str(port),
                             "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: healthy(url), START_TIMEOUT, "prefect server", proc)
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def webhook(receiver_factory) -> Iterator[tuple[str, list[dict]]]:
    with receiver_factory() as (url, received):
        yield f"{url}/mudjack", received


@pytest.fixture(scope="module")
def ops(tmp_path_factory, project_copy, prefect_api, webhook) -> Iterator[dict]:
    """The project checkout, its DVC remote, and `mudjack serve` running against the server."""
    base = tmp_path_factory.mktemp("ops")
    project = project_copy(base / "project", GATES, commit=True)
    deploy_scenario(project)
    remote = base / "dvc-remote"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(base / "serve.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--cron", CRON,
                             "--root", str(project), "--remote", str(remote),
                             "--webhook", webhook[0]],
                            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: deployment(prefect_api) is not None, START_TIMEOUT, "serve", proc)
        yield {"project": project, "remote": remote, "api": prefect_api, "hooks": webhook[1],
               "log": base / "serve.log"}
    finally:
        stop(proc)
        log.close()


def deployment(api: str):
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT_NAME}")
        except ObjectNotFound:
            return None


def trigger(api: str):
    """One run of the served deployment through the API, waited on to its end."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        return run_deployment(f"{FLOW_NAME}/{DEPLOYMENT_NAME}", timeout=600, poll_interval=2)


def artifacts(api: str, flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=wanted)}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout


def remote_objects(remote: Path, lock: dict, stage: str, path: str) -> list[Path]:
    """The remote's files for one output of dvc.lock: its .dir listing and every file in it."""
    md5 = next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)
    listing = remote / "files" / "md5" / md5[:2] / md5[2:]
    entries = json.loads(listing.read_text())
    return [listing] + [remote / "files" / "md5" / e["md5"][:2] / e["md5"][2:] for e in entries]


@pytest.fixture(scope="module")
def first_run(ops: dict):
    return trigger(ops["api"])


def test_deployment_is_scheduled(ops: dict) -> None:
    found = deployment(ops["api"])
    assert [s.schedule.cron for s in found.schedules] == [CRON]
    assert found.parameters["promote"] is True
    assert found.parameters["root"] == str(ops["project"])


def test_a_passing_run_is_pushed_committed_and_promoted(ops: dict, first_run) -> None:
    project, remote = ops["project"], ops["remote"]
    assert first_run.state.is_completed(), (first_run.state, ops["log"].read_text()[-3000:])
    assert first_run.state.message.startswith("promoted v1.0.0")
    assert prod_version(project) == "v1.0.0"
    tag_commit = git(project, "rev-parse", f"{ARTIFACT}@v1.0.0^{{commit}}").strip()
    assert tag_commit == git(project, "rev-parse", "HEAD").strip()
    # The tagged commit holds the run's lock file, metrics (which pass the gates) and report.
    lock = yaml.safe_load(git(project, "show", f"{tag_commit}:dvc.lock"))
    metrics = json.loads(git(project, "show", f"{tag_commit}:reports/metrics.json"))
    assert metrics["tasks"]["digits"]["patched"]["asr"] <= 0.1
    assert "<section id=\"bugs\">" in git(project, "show", f"{tag_commit}:reports/run.html")
    # The DVC remote holds the ONNX files + manifest and the patched encoder of that lock.
    onnx = remote_objects(remote, lock, "export", "models/onnx")
    assert len(onnx) == 3 and all(p.is_file() for p in onnx)  # listing, digits.onnx, manifest
    assert all(p.is_file() for p in remote_objects(remote, lock, "patch", "models/patched"))
    published = artifacts(ops["api"], first_run.id)
    assert {GATES_KEY, REPORT_KEY, OUTCOME_KEY} <= set(published)
    assert "all gates pass" in published[GATES_KEY].data
    (hook,) = [h["json"] for h in ops["hooks"] if h["json"]["flow_run_id"] == str(first_run.id)]
    assert hook["state"] == "Completed" and not hook["failed"] and "v1.0.0" in hook["message"]


def test_a_failing_gate_promotes_nothing(ops: dict, first_run, tmp_path: Path) -> None:
    project = ops["project"]
    tags_before = git(project, "tag", "--list")
    # A client's new report, added with `mudjack submit`: an input the model gets right
    # (intake rejects it, so only validate and intake rerun: the test stays short).
    sent = json.loads((project / "client-inbox" / "false-000.json").read_text())
    shutil.copy(project / "client-inbox" / sent["input"], tmp_path / "client-7.png")
    report = {"id": "client-7", "task": "digits", "label": sent["label"], "input": "client-7.png"}
    (tmp_path / "client-7.json").write_text(json.dumps(report))
    added = CliRunner().invoke(app, ["submit", str(tmp_path / "client-7.json"),
                                     "--root", str(project)])
    assert added.exit_code == 0 and "accepted: 'client-7'" in added.output, added.output
    params = yaml.safe_load((project / "params.yaml").read_text())
    # the repair itself can reach ASR 0 here; a float32 export never matches PyTorch to the
    # last bit (1e-5 on this model), so this gate fails for sure
    params["gates"]["max_onnx_diff"] = 0.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    second = trigger(ops["api"])
    assert second.state.is_failed(), second.state
    assert "gates failed" in second.state.message and "max_onnx_diff" in second.state.message
    intake_log = (project / INTAKE_LOG).read_text()
    assert '"report_id": "client-7"' in intake_log  # the new report was picked up
    assert not (project / "bugs" / "client-7").exists()
    assert git(project, "tag", "--list") == tags_before
    assert prod_version(project) == "v1.0.0" and len(versions(project)) == 1
    assert FAILURE_KEY in artifacts(ops["api"], second.id)
    (hook,) = [h["json"] for h in ops["hooks"] if h["json"]["flow_run_id"] == str(second.id)]
    assert hook["failed"] and hook["state"] == "Failed" and "max_onnx_diff" in hook["message"]
