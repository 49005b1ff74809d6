"""Quiet, local defaults for the tools the pipeline drives (Prefect, DVC, Great Expectations)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_FILE = "dvc.yaml"


def project_root(start: Path | None = None) -> Path:
    """The nearest folder holding dvc.yaml, searching `start` (default: cwd) and its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    raise FileNotFoundError(f"no {PROJECT_FILE} in {here} or any parent folder")


def default_environment(root: Path) -> dict[str, str]:
    """The variables `configure_environment` sets when they are not already set."""
    root = Path(root).resolve()
    return {
        # No telemetry from any tool: the pipeline runs offline.
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        # Prefect's profile, database and logs stay inside the project, not in ~/.prefect.
        "PREFECT_HOME": str(root / ".prefect"),
        # The ephemeral API server can be slow to start on a small, busy machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # DVC keeps per-repo state in a site cache (default: a system folder that may be
        # read-only); keep it next to the project.
        "DVC_SITE_CACHE_DIR": str(root / ".dvc_site_cache"),
    }


def configure_environment(root: Path) -> None:
    """Set the quiet/local defaults, keeping any value the user already exported."""
    for name, value in default_environment(root).items():
        os.environ.setdefault(name, value)
