"""Test helpers: the `run_if` skip decorator, shared fixtures, the reference Mudjacking oracle
and the DDP worker."""

from tests.helpers.requirements import CHROMIUM, HADOLINT, REQUIREMENTS, SHARED, RunIf, run_if

__all__ = ["CHROMIUM", "HADOLINT", "REQUIREMENTS", "SHARED", "RunIf", "run_if"]
