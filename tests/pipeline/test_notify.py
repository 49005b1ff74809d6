"""Webhook delivery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from pipeline.notify import WEBHOOK_ENV, outcome_markdown, post_json, url_problem, webhook_url


@pytest.fixture
def hook_server(receiver_factory) -> Iterator[tuple[str, list[dict]]]:
    with receiver_factory() as server:
        yield server


def test_post_json_delivers(hook_server) -> None:
    url, received = hook_server
    assert post_json(f"{url}/hook", {"state": "Failed", "message": "gates failed"}) == 204
    assert received == [{"path": "/hook", "type": "application/json",
                         "json": {"state": "Failed", "message": "gates failed"}}]


def test_post_json_reports_errors_without_raising(hook_server) -> None:
    url, _ = hook_server
    assert post_json(f"{url}/broken", {}) == 500
    server_gone = url.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens there
    assert post_json(server_gone, {}, timeout=2) is None


def test_webhook_url_parameter_wins_over_environment(monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "http://127.0.0.1:1/env")
    assert webhook_url({"webhook_url": "http://127.0.0.1:1/param"}) == "http://127.0.0.1:1/param"
    assert webhook_url({"webhook_url": ""}) == "http://127.0.0.1:1/env"
    monkeypatch.delenv(WEBHOOK_ENV)
    assert webhook_url({}) == ""


def test_outcome_markdown_names_the_failure() -> None:
    text = outcome_markdown({"failed": True, "flow_run": "brave-fox", "state": "Failed",
                             "root": "/srv/mudjack", "message": "gates failed: max_patched_asr"})
    assert text.startswith("## Repair run FAILED") and "gates failed: max_patched_asr" in text


@pytest.mark.parametrize("url", ["not a url", "", "http://[::1", "http://127.0.0.1:99999/h",
                                 "file:///etc/passwd", "http://host/a b"])
def test_post_json_refuses_a_url_that_is_not_a_webhook(url: str, caplog) -> None:
    """A ValueError out of urllib escaped the run's state hook: no notice, a crashed hook."""
    assert url_problem(url) is not None
    assert post_json(url, {}) is None
    assert "not sent" in caplog.text


def test_post_json_survives_a_server_that_does_not_speak_http() -> None:
    """A garbled status line is an http.client.HTTPException, neither URLError nor OSError."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"garbage\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    with server:
        assert post_json(f"http://127.0.0.1:{server.getsockname()[1]}/h", {}, timeout=5) is None
