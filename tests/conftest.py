"""Fixtures shared by every test package: a real local conda channel, a real agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.agent import AgentProcess, start_agent
from testkit.channel import standard_channel
from testkit.processes import PROJECT_ROOT

# Built packages survive between runs here, so the 80 MB acme-big is made only once.
PACKAGE_CACHE = PROJECT_ROOT / ".cache" / "test-packages"


@pytest.fixture(scope="session")
def channel_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The standard fixture channel (acme-*), indexed, as a ``file://`` URL."""
    return standard_channel(tmp_path_factory.mktemp("channel"), PACKAGE_CACHE)


@pytest.fixture(scope="session")
def shared_agent(
    tmp_path_factory: pytest.TempPathFactory, channel_url: str
) -> Iterator[AgentProcess]:
    """One agent for tests that only need independent environments on it."""
    with start_agent(
        tmp_path_factory.mktemp("agent") / "data", channel_url, token="t0ken"
    ) as agent:
        yield agent


@pytest.fixture
def agent_factory(tmp_path: Path, channel_url: str) -> Iterator:
    """Start agents with particular settings; all are stopped after the test."""
    started: list[AgentProcess] = []

    def start(token: str = "t0ken", **env: str) -> AgentProcess:
        data_dir = tmp_path / f"agent{len(started)}" / "data"
        agent = start_agent(data_dir, channel_url, token=token, extra_env=env)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
