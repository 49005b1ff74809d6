"""Versioning and promotion of a passing run: DVC remote, a git commit, a GTO version in `prod`.

A promotion, in the project's git + DVC repo (an operations checkout, not a developer's):

1. `dvc push` every cached output of dvc.lock (data, models, ONNX files, bugs) to the remote;
2. a git commit of the run's record: dvc.lock, params.yaml, dvc.yaml, artifacts.yaml,
   reports/metrics.json and reports/run.html (force-added: reports/ is ignored for developers);
3. GTO registers that commit as `mudjack-encoder@vN.0.0` and assigns it the stage `prod`
   (git tags; artifacts.yaml annotates what the artifact is: the ONNX files, manifest, metrics).

`prod` is held by exactly one version: assigning it removes it from the others, so rolling back
is assigning it to the previous version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mudjack.safepath import one_line
from pipeline.dag import run_dvc, stage_address
from stages.artifacts import METRICS, RUN_HTML

ARTIFACT = "mudjack-encoder"
STAGE = "prod"
REMOTE_NAME = "mudjack"
REMOTE_ENV = "MUDJACK_REMOTE"
DEFAULT_REMOTE = "../mudjack-remote"  # relative to the project root
RECORD = ("dvc.lock", "dvc.yaml", "params.yaml", "artifacts.yaml", METRICS.as_posix(), RUN_HTML.as_posix())
IDENTITY = {"name": "mudjack", "email": "mudjack@localhost"}


class PromotionError(RuntimeError):
    """A promotion, rollback or registry command that cannot be done; the message says why."""


@dataclass(frozen=True)
class Promotion:
    """What a promotion did: the version in prod, its commit, and where the data went."""

    version: str
    commit: str
    remote: str
    created: bool  # False: the run was identical to an already registered version

    def describe(self) -> str:
        verb = "promoted" if self.created else "already registered:"
        return f"{verb} {ARTIFACT}@{self.version} ({self.commit[:8]}) to {STAGE}; data in {self.remote}"


# --- git -----------------------------------------------------------------------------------


def git_identity(root: Path) -> tuple[str, str]:
    """The configured git user, or mudjack's own when the checkout has none (CI, containers)."""
    name = _git(root, "config", "user.name", check=False).strip()
    email = _git(root, "config", "user.email", check=False).strip()
    return name or IDENTITY["name"], email or IDENTITY["email"]


def _git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=str(root), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise PromotionError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def require_git(root: Path) -> None:
    """Refuse, in one line, a project outside any git repository (GTO would raise SCMError)."""
    if _git(root, "rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
        raise PromotionError(f"{root} is not a git repository: promotion, rollback and the version "
                             "registry need one (versions are git tags, promotions git commits)")


def commit_record(root: Path, message: str) -> tuple[str, bool]:
    """Commit RECORD's files that exist; returns (HEAD commit, whether a commit was made)."""
    paths = [p for p in RECORD if (root / p).exists()]
    _git(root, "add", "--force", "--", *paths)
    staged = _git(root, "diff", "--cached", "--name-only", "--", *paths).split()
    if staged:
        name, email = git_identity(root)
        _git(root, "-c", f"user.name={name}", "-c", f"user.email={email}",
             "commit", "--quiet", "-m", message, "--", *paths)
    return _git(root, "rev-parse", "HEAD").strip(), bool(staged)


# --- the run's record matches the workspace -----------------------------------------------


def _metrics_producer(repo: Any, root: Path) -> str | None:
    """The stage writing METRICS, as a target for DVC (an absolute path: DVC resolves targets
    against the process cwd), or None."""
    metrics = root / METRICS
    for stage in repo.index.stages:
        if any(Path(out.fs_path) == metrics for out in stage.outs):
            name = getattr(stage, "name", None)
            path = str(root / stage.path_in_repo)
            return f"{path}:{name}" if name else path
    return None


def stale_stages(root: Path) -> dict[str, Any]:
    """`dvc status` of the stage writing METRICS and its upstream (of every stage when none
    does): {stage: what changed}, empty when the run is up to date.

    Stages outside that upstream (`sequela`, never run by the flow) are not the run's record."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, repo.lock:
        stages = repo.stage.collect(_metrics_producer(repo, root), with_deps=True)
        changes = {stage_address(stage): stage.status(check_updates=False) for stage in stages}
    # stage.status() keys its answer by a path relative to the cwd: keep the value only.
    return {name: next(iter(change.values())) for name, change in changes.items() if change}


def _describe_change(change: Any) -> str:
    """DVC's nested status entry ({'changed deps': {'params.yaml': {'modified': 'b.factor'}}})
    as `changed deps: params.yaml: modified: b.factor`."""
    if isinstance(change, dict):
        return ", ".join(f"{key}: {_describe_change(value)}" for key, value in change.items())
    if isinstance(change, list):
        return ", ".join(_describe_change(item) for item in change)
    return str(change)


def require_up_to_date(root: Path) -> None:
    """Refuse, in one line, a workspace that no longer matches the run's dvc.lock and metrics
    (params.yaml, code or outputs changed since `dvc repro`): the commit would pair the new
    files with the old run's record."""
    stale = stale_stages(root)
    if stale:
        changes = "; ".join(f"{stage}: {_describe_change(change)}" for stage, change in stale.items())
        raise PromotionError(one_line(f"the run is out of date, nothing promoted: {changes}; "
                                      "run `mudjack run` (or `dvc repro`) first"))


# --- DVC remote ----------------------------------------------------------------------------


def _is_url(location: str) -> bool:
    return "://" in location


def configure_remote(root: Path, location: str = "") -> str:
    """The name of the DVC remote to push to.

    `location` (a path or URL; else $MUDJACK_REMOTE) becomes the remote REMOTE_NAME in
    .dvc/config.local. Without either, the repo's default remote (`dvc remote add -d`) is used,
    and without that a local folder, DEFAULT_REMOTE.
    """
    from dvc.repo import Repo

    location = location or os.environ.get(REMOTE_ENV, "")
    with Repo(str(root)) as repo:
        default = repo.config["core"].get("remote")
        if default and not location:
            return default
        url = location or DEFAULT_REMOTE
        if not _is_url(url):
            url = str((root / url).resolve())
            Path(url).mkdir(parents=True, exist_ok=True)
        with repo.config.edit("local") as config:
            config["remote"][REMOTE_NAME] = {"url": url}
    return REMOTE_NAME


def remote_url(root: Path, name: str) -> str:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["remote"][name]["url"]


def push(root: Path, remote: str) -> str:
    """`dvc push -r remote`: every cached output of dvc.lock; returns DVC's summary."""
    return run_dvc([sys.executable, "-m", "dvc", "push", "-r", remote], cwd=root).strip()


# --- GTO registry --------------------------------------------------------------------------


def _major(version: str) -> int:
    return int(version.lstrip("v").split(".")[0])


def versions(root: Path) -> list[dict[str, Any]]:
    """Registered versions of ARTIFACT, newest first: {version, commit, stages}."""
    from gto import api
    from gto.exceptions import ArtifactNotFound, GTOException

    require_git(root)
    try:
        found = api.find_latest_version(str(root), ARTIFACT, all=True)
    except ArtifactNotFound:
        return []
    except GTOException as err:  # hand-made tags: two versions on one commit, say
        raise _registry_error(root, err) from None
    rows = [{"version": v.version, "commit": v.commit_hexsha,
             "stages": sorted(s.stage for s in v.get_vstages())} for v in found]
    return sorted(rows, key=lambda r: _major(r["version"]), reverse=True)


def _registry_error(root: Path, err: Exception) -> PromotionError:
    return PromotionError(one_line(f"the {ARTIFACT} registry in {root} is unreadable: {err}"))


def prod_version(root: Path) -> str | None:
    """The version holding STAGE, or None."""
    return next((r["version"] for r in versions(root) if STAGE in r["stages"]), None)


def _wait_for_new_second(root: Path) -> None:
    """GTO orders events by their tags' times, to the second: keep each event in a new one."""
    last = _git(root, "for-each-ref", "--sort=-creatordate", "--count=1",
                "--format=%(creatordate:unix)", f"refs/tags/{ARTIFACT}*").strip()
    while last and int(time.time()) <= int(last):
        time.sleep(0.05)


def _gto(root: Path, action: str, **kwargs: Any) -> None:
    from gto import api
    from gto.exceptions import GTOException

    name, email = git_identity(root)
    _wait_for_new_second(root)
    try:
        getattr(api, action)(str(root), ARTIFACT, author=name, author_email=email, **kwargs)
    except GTOException as err:
        raise _registry_error(root, err) from None


def register(root: Path, commit: str, message: str) -> tuple[str, bool]:
    """Register `commit` as the next major version; (version, created). A commit registered
    already keeps its version."""
    existing = versions(root)
    for row in existing:
        if row["commit"] == commit:
            return row["version"], False
    version = f"v{max((_major(r['version']) for r in existing), default=0) + 1}.0.0"
    _gto(root, "register", ref=commit, version=version, message=message)
    return version, True


def set_prod(root: Path, version: str, message: str = "") -> None:
    """Make `version` the only one in STAGE (assign it first, so prod is never empty)."""
    rows = versions(root)
    if version not in {r["version"] for r in rows}:
        known = ", ".join(r["version"] for r in rows) or "none"
        raise PromotionError(f"{ARTIFACT}@{version} is not registered (registered: {known})")
    holders = [r["version"] for r in rows if STAGE in r["stages"]]
    if version not in holders:
        _gto(root, "assign", stage=STAGE, version=version,
             message=message or f"{STAGE}: {ARTIFACT}@{version}")
    for other in holders:
        if other != version:
            _gto(root, "unassign", stage=STAGE, version=other,
                 message=f"{STAGE} moved to {version}")


def previous_version(root: Path) -> str:
    """The registered version just before the one in prod."""
    current = prod_version(root)
    if current is None:
        raise PromotionError(f"no version of {ARTIFACT} is in {STAGE}: nothing to roll back")
    older = [r["version"] for r in versions(root) if _major(r["version"]) < _major(current)]
    if not older:
        raise PromotionError(f"{ARTIFACT}@{current} is the first version: nothing to roll back to")
    return older[0]


def rollback(root: Path) -> str:
    """Assign prod to the previous version; returns it."""
    current, target = prod_version(root), previous_version(root)
    set_prod(root, target, message=f"rollback from {current}")
    return target


# --- the whole promotion -------------------------------------------------------------------


def summary_line(metrics: dict[str, Any]) -> str:
    """`digits asr 0.98->0.06 clean_acc 0.984->0.987` for commit and tag messages."""
    parts = []
    for name, result in sorted(metrics.get("tasks", {}).items()):
        for metric in ("asr", "clean_acc"):
            before = result.get("backdoored", {}).get(metric)
            after = result.get("patched", {}).get(metric)
            if before is not None and after is not None:
                parts.append(f"{name} {metric} {before:.3f}->{after:.3f}")
    return ", ".join(parts) or "no task metrics"


def promote_run(root: Path, metrics: dict[str, Any], remote: str = "") -> Promotion:
    """Push the run's data, commit its record, register it and put it in prod.

    The caller checks the gates first (pipeline.gates). Refused before anything is written when
    the workspace changed since the run (`require_up_to_date`). Putting a registered version
    back in prod (`set_prod`) commits nothing, so needs no such check."""
    root = Path(root).resolve()
    require_git(root)  # before the push: the commit and the tags would fail after it
    require_up_to_date(root)
    name = configure_remote(root, remote)
    push(root, name)
    line = summary_line(metrics)
    commit, _ = commit_record(root, f"mudjack: repaired model ({line})")
    version, created = register(root, commit, f"{ARTIFACT}: {line}")
    set_prod(root, version)
    return Promotion(version, commit, remote_url(root, name), created)
