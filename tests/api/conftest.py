"""Control-plane fixtures: a fresh PostgreSQL database, the real agent, the real API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, api_env, start_api
from testkit.postgres import fresh_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    shared_agent: AgentProcess,
    channel_url: str,
) -> Iterator[ApiProcess]:
    """One control plane on PostgreSQL for the tests that create their own users."""
    data_dir = tmp_path_factory.mktemp("api")
    env = api_env(database_url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
    process = start_api(env, data_dir / "api.log")
    yield process
    process.stop()


@pytest.fixture
def api_factory(
    tmp_path: Path, shared_agent: AgentProcess, channel_url: str
) -> Iterator[Callable[..., ApiProcess]]:
    """Start extra control planes (own settings, maybe own database); stopped after."""
    started: list[ApiProcess] = []

    def start(database_url: str, **extra: str) -> ApiProcess:
        env = api_env(
            database_url,
            tmp_path / "data",
            extra.pop("executors", shared_agent.addr),
            shared_agent.token,
            channel_url,
            **extra,
        )
        process = start_api(env, tmp_path / f"api{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of this test only (requested before ``api_factory``, so it outlives the
    control planes): no other control plane claims the jobs of these tests."""
    with fresh_database() as url:
        yield url
