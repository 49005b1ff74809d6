"""Tell people how a run ended: the log, a Prefect markdown artifact, and a webhook POST.

The flow's state hooks (`on_failure`, `on_completion`) call `report_run`. The webhook URL is
the flow parameter `webhook_url` or else $MUDJACK_WEBHOOK_URL; without either, no POST. A
notification that cannot be delivered is logged and never changes the run's outcome.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

WEBHOOK_ENV = "MUDJACK_WEBHOOK_URL"
TIMEOUT_SECONDS = 10
FAILURE_KEY = "repair-failure"
OUTCOME_KEY = "repair-outcome"

logger = logging.getLogger("mudjack.notify")


def webhook_url(parameters: dict[str, Any]) -> str:
    return str(parameters.get("webhook_url") or os.environ.get(WEBHOOK_ENV, ""))


def url_problem(url: str) -> str | None:
    """Why `url` cannot take a webhook POST (not an http(s) URL with a host), or None."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "it holds spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError as err:
        return str(err)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    return None


def post_json(url: str, payload: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> int | None:
    """POST `payload` as JSON; returns the HTTP status, or None when it could not be sent."""
    if problem := url_problem(url):
        logger.warning("webhook %r not sent: %s", url, problem)
        return None
    body = json.dumps(payload).encode()
    try:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as err:
        logger.warning("webhook %s answered %s", url, err.code)
        return err.code
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        logger.warning("webhook %s unreachable: %s", url, err)
        return None


def run_payload(flow_name: str, flow_run: Any, state: Any) -> dict[str, Any]:
    """What the webhook receives: which run, how it ended, and why."""
    return {
        "flow": flow_name,
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "deployment_id": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "state": state.name,
        "failed": state.is_failed() or state.is_crashed(),
        "message": state.message or "",
        "root": (flow_run.parameters or {}).get("root"),
    }


def outcome_markdown(payload: dict[str, Any]) -> str:
    title = "Repair run FAILED" if payload["failed"] else "Repair run finished"
    return "\n".join([f"## {title}", "", f"- run: `{payload['flow_run']}`",
                      f"- state: **{payload['state']}**", f"- project: `{payload['root']}`",
                      "", "```", payload["message"] or "(no message)", "```"])


def publish_markdown(flow_run_id: Any, key: str, markdown: str, description: str) -> None:
    """A markdown artifact attached to the run (hooks run after the run's own context)."""
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    artifact = ArtifactCreate(key=key, type="markdown", data=markdown, description=description,
                              flow_run_id=flow_run_id)
    try:
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
    except Exception as err:  # the API being down must not hide the run's own outcome
        logger.warning("could not publish the %s artifact: %s", key, err)


def _run_logger(flow: Any, flow_run: Any) -> Any:
    """The run's own logger (its lines reach the Prefect UI), else the module logger."""
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow)
    except Exception:  # no API to send logs to
        return logger


def report_run(flow: Any, flow_run: Any, state: Any) -> dict[str, Any]:
    """State hook: log the outcome, publish it as a markdown artifact, POST it to the webhook."""
    payload = run_payload(flow.name, flow_run, state)
    level = logging.ERROR if payload["failed"] else logging.INFO
    _run_logger(flow, flow_run).log(level, "run %s ended %s: %s", flow_run.name, state.name,
                                    payload["message"])
    key = FAILURE_KEY if payload["failed"] else OUTCOME_KEY
    publish_markdown(flow_run.id, key, outcome_markdown(payload), f"{flow.name}: {state.name}")
    url = webhook_url(flow_run.parameters or {})
    if url:
        payload["webhook_status"] = post_json(url, payload)
    return payload
