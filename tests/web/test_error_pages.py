"""The web UI's error pages, read as plain HTTP: a hidden environment or job is a 404
(status, not only title), an unexpected exception a 500 "Internal error", an unreachable
control plane a readable 503, and none of them shows a stack trace."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from darb.v1 import common_pb2, environments_pb2
from services.web.app import make_app
from services.web.pages.common import API
from services.web.security import SESSION_COOKIE
from shared.config import WebSettings
from testkit.control_plane import Client
from tests.web.conftest import Stack

INJECTED = "injected fault 7f3a"  # the message of the exception the 500 test raises


def _get(url: str, token: str) -> tuple[int, str]:
    """A GET with the session cookie of ``token``: the status and the page."""
    request = urllib.request.Request(url, headers={"Cookie": f"{SESSION_COOKIE}={token}"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_hidden_environment_and_its_job_are_404_on_every_page(stack: Stack, user: Client) -> None:
    stranger = stack.api.new_user()
    created = stranger.create(f"hidden-{uuid.uuid4().hex[:8]}", ["acme-core"])
    assert stranger.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    env = f"/environments/{created.environment.id}"
    paths = [
        env,
        f"{env}/history",
        f"{env}/sharing",
        f"{env}/export/pixi.toml",
        f"{env}/export/pixi.lock",
        f"/jobs/{created.job.id}",
        f"/jobs?environment={created.environment.id}",
    ]
    for path in paths:  # its owner sees every one: the 404s below are about who asks
        assert _get(stack.url + path, stranger.token)[0] == 200, path
    unknown = str(uuid.uuid4())
    for path in [*paths, f"/environments/{unknown}", f"/jobs?environment={unknown}"]:
        status, page = _get(stack.url + path, user.token)
        assert status == 404, (path, status)
        assert 'id="error-title">Not found<' in page, path
        assert "Traceback" not in page, path


def _page(settings: WebSettings, path: str, token: str, fail: Any = None) -> tuple[int, str]:
    """GET ``path`` from the app running in this process, with the session cookie of
    ``token``; ``fail`` (message -> bool) picks the API calls that raise RuntimeError."""

    async def get() -> tuple[int, str]:
        app = make_app(settings)
        async with TestClient(TestServer(app)) as client:
            api = app[API]
            real_call = api.call

            async def call(method: Any, message: Any, token: str = "") -> Any:
                if fail is not None and fail(message):
                    raise RuntimeError(INJECTED)
                return await real_call(method, message, token)

            api.call = call  # type: ignore[method-assign]
            response = await client.get(path, headers={"Cookie": f"{SESSION_COOKIE}={token}"})
            return response.status, await response.text()

    return asyncio.run(get())


def test_an_unexpected_exception_is_a_500_page_without_a_trace(
    stack: Stack, user: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Injected: the app runs against the real control plane, but its ListEnvironments
    call raises RuntimeError, a bug no real call can be made to cause."""
    settings = WebSettings(addr="127.0.0.1:0", api_addr=stack.api.addr)
    assert _page(settings, "/environments", user.token)[0] == 200  # without the fault

    def listing(message: Any) -> bool:
        return isinstance(message, environments_pb2.ListEnvironmentsRequest)

    with caplog.at_level(logging.ERROR, logger="services.web.app"):
        status, page = _page(settings, "/environments", user.token, fail=listing)
    assert status == 500
    assert 'id="error-title">Internal error<' in page
    assert "please try again" in page
    assert "Traceback" not in page and INJECTED not in page and "RuntimeError" not in page
    assert user.user.username in page  # still the page of the signed-in user
    # The trace is in the web process's log instead.
    assert any(r.exc_info and str(r.exc_info[1]) == INJECTED for r in caplog.records)


def test_an_unreachable_control_plane_is_a_readable_503() -> None:
    """Real: the app calls a loopback port that is bound but not listening, so every
    call fails with gRPC's own UNAVAILABLE (connection refused). Nothing is injected."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # held, so no other process listens there meanwhile
        api_addr = f"127.0.0.1:{unused.getsockname()[1]}"
        settings = WebSettings(addr="127.0.0.1:0", api_addr=api_addr)
        for path in ("/environments", f"/jobs/{uuid.uuid4()}"):
            status, page = _page(settings, path, "a-session-token")
            assert status == 503, (path, status, page)
            assert 'id="error-title">The control plane is unavailable<' in page, path
            assert "Please try again in a moment." in page, path
            assert "Traceback" not in page and "StatusCode" not in page, path
            assert "127.0.0.1" not in page and "onnect" not in page, path  # no gRPC details
        # The live job stream says so as its last event, readable too.
        status, stream = _page(settings, f"/jobs/{uuid.uuid4()}/events", "a-session-token")
        assert status == 200
        assert stream.endswith(
            'event: failure\ndata: {"message": "Please try again in a moment.", "retry": true}\n\n'
        ), stream
