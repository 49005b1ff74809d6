"""Promotion on a real git + DVC repo: DVC remote, git commit, GTO versions, prod and rollback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.dag import run_dvc
from pipeline.flow import read_metrics
from pipeline.promote import (
    ARTIFACT,
    PromotionError,
    previous_version,
    prod_version,
    promote_run,
    rollback,
    set_prod,
    versions,
)

REPRO = [sys.executable, "-m", "dvc", "repro"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout


def remote_has(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def lock_md5(root: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def bump_factor(root: Path) -> None:
    params = root / "params.yaml"
    factor = yaml.safe_load(params.read_text())["b"]["factor"]
    params.write_text(params.read_text().replace(f"factor: {factor}", f"factor: {factor + 1}"))
    run_dvc(REPRO, root)


@pytest.fixture
def promoted(tiny_repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny repo run once and promoted to a local remote."""
    run_dvc(REPRO, tiny_repo)
    remote = tmp_path / "remote"
    first = promote_run(tiny_repo, read_metrics(tiny_repo), str(remote))
    assert (first.version, first.created, first.remote) == ("v1.0.0", True, str(remote))
    return tiny_repo, remote


def test_promotion_pushes_commits_and_registers(promoted: tuple[Path, Path]) -> None:
    root, remote = promoted
    for stage, path in (("a", "a.txt"), ("b", "b.txt"), ("c", "c.txt")):
        assert remote_has(remote, lock_md5(root, stage, path)), path
    committed = git(root, "show", "--name-only", "--format=%s", "HEAD").split("\n")
    assert committed[0].startswith("mudjack: repaired model (digits asr 0.950->0.010")
    assert {"dvc.lock", "dvc.yaml", "params.yaml", "reports/metrics.json"} <= set(committed[1:])
    head = git(root, "rev-parse", "HEAD").strip()
    assert git(root, "rev-parse", f"{ARTIFACT}@v1.0.0^{{commit}}").strip() == head
    assert prod_version(root) == "v1.0.0"
    # The local remote lives in .dvc/config.local, so the committed config stays untouched.
    assert "remote" not in (root / ".dvc" / "config").read_text()


def test_an_unchanged_run_is_not_a_new_version(promoted: tuple[Path, Path]) -> None:
    root, remote = promoted
    again = promote_run(root, read_metrics(root), str(remote))
    assert (again.version, again.created) == ("v1.0.0", False)
    assert [v["version"] for v in versions(root)] == ["v1.0.0"]


def test_new_version_then_rollback_and_promote_back(promoted: tuple[Path, Path]) -> None:
    root, remote = promoted
    bump_factor(root)
    second = promote_run(root, read_metrics(root), str(remote))
    assert (second.version, second.created) == ("v2.0.0", True)
    assert remote_has(remote, lock_md5(root, "b", "b.txt"))
    assert prod_version(root) == "v2.0.0"
    assert [(v["version"], v["stages"]) for v in versions(root)] == [
        ("v2.0.0", ["prod"]), ("v1.0.0", [])]

    assert previous_version(root) == "v1.0.0"
    assert rollback(root) == "v1.0.0"
    assert prod_version(root) == "v1.0.0"
    with pytest.raises(PromotionError, match="first version"):
        rollback(root)

    set_prod(root, "v2.0.0")  # promote again, right after the rollback
    assert prod_version(root) == "v2.0.0"
    with pytest.raises(PromotionError, match="not registered"):
        set_prod(root, "v7.0.0")


def test_rollback_without_prod_is_an_error(tiny_repo: Path) -> None:
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(tiny_repo)


def test_default_dvc_remote_is_used(tiny_repo: Path, tmp_path: Path) -> None:
    # A team's remote (S3, GCS, ...) set with `dvc remote add -d`; a local folder stands in.
    store = tmp_path / "team-store"
    run_dvc([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(store)], tiny_repo)
    run_dvc(REPRO, tiny_repo)
    done = promote_run(tiny_repo, read_metrics(tiny_repo))
    assert done.remote == str(store)
    assert remote_has(store, lock_md5(tiny_repo, "c", "c.txt"))


def test_a_registry_gto_cannot_read_is_a_promotion_error(tmp_path: Path) -> None:
    """Hand-made tags: two versions on one commit, one of them in prod (GTO's ManyVersions)."""
    git(tmp_path, "init", "--quiet")
    who = ("-c", "user.name=a", "-c", "user.email=a@b")
    git(tmp_path, *who, "commit", "--quiet", "--allow-empty", "-m", "init")
    for tag in (f"{ARTIFACT}@v1.0.0", f"{ARTIFACT}@v2.0.0-rc1", f"{ARTIFACT}#prod#1"):
        git(tmp_path, *who, "tag", "-a", tag, "-m", "x")
    for action in (versions, rollback, lambda root: set_prod(root, "v1.0.0")):
        with pytest.raises(PromotionError, match="registry .* is unreadable: Multiple versions") as caught:
            action(tmp_path)
        assert "\n" not in str(caught.value)


def test_a_run_older_than_params_yaml_is_not_promoted(tiny_repo: Path, tmp_path: Path) -> None:
    """params.yaml changed after `dvc repro`: the promotion committed the new params.yaml with
    the old run's dvc.lock and metrics, and registered that commit in prod."""
    run_dvc(REPRO, tiny_repo)
    params = tiny_repo / "params.yaml"
    params.write_text(params.read_text().replace("factor: 2", "factor: 7"))
    remote = tmp_path / "remote"
    with pytest.raises(PromotionError) as refused:
        promote_run(tiny_repo, read_metrics(tiny_repo), str(remote))
    assert str(refused.value) == (
        "the run is out of date, nothing promoted: b: changed deps: params.yaml: b.factor: "
        "modified; run `mudjack run` (or `dvc repro`) first")
    assert not remote.exists() and not (tiny_repo / ".dvc" / "config.local").exists()
    assert git(tiny_repo, "log", "--all", "--oneline") == "" and versions(tiny_repo) == []
    bump_factor(tiny_repo)  # rerun: now the record matches, and it is promoted
    assert promote_run(tiny_repo, read_metrics(tiny_repo), str(remote)).version == "v1.0.0"


def test_a_stage_outside_the_metrics_upstream_does_not_block(repo_factory, tmp_path: Path) -> None:
    """The flow runs up to the stage writing metrics.json (`report`); a stage beside it that it
    never runs (`sequela`) is no part of the run's record."""
    from tests.pipeline.conftest import DVC_YAML

    root = repo_factory(DVC_YAML + "  beside:\n    cmd: python -c \"open('d.txt', 'w')\"\n"
                                   "    outs: [d.txt]\n")
    run_dvc([*REPRO, "c"], root)
    assert promote_run(root, read_metrics(root), str(tmp_path / "remote")).version == "v1.0.0"
