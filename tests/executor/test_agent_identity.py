"""The data directory's identity (``GetInfoResponse.data_id``): written at the first
start, the same after a restart on the same directory, a new one once the directory was
emptied. Real agent processes, real files."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable

from darb.executor.v1 import executor_pb2 as pb
from testkit.agent import AgentProcess, start_agent


def data_id(agent: AgentProcess) -> str:
    info = agent.stub().GetInfo(pb.GetInfoRequest(), metadata=agent.metadata, timeout=10)
    return str(info.data_id)


def test_the_identity_survives_a_restart_and_not_an_emptied_directory(
    channel_url: str, agent_factory: Callable[..., AgentProcess]
) -> None:
    agent = agent_factory()
    first = data_id(agent)
    identity = agent.data_dir / "identity"
    assert len(first) == 32 and int(first, 16) >= 0
    assert identity.read_text() == f"{first}\n"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert not list(agent.data_dir.glob(".identity*"))  # no temp file left

    agent.stop()
    agent = start_agent(agent.data_dir, channel_url, token=agent.token, addr=agent.addr)
    try:
        assert data_id(agent) == first
    finally:
        agent.stop()

    shutil.rmtree(agent.data_dir)
    agent = start_agent(agent.data_dir, channel_url, token=agent.token, addr=agent.addr)
    try:
        second = data_id(agent)
        assert len(second) == 32 and second != first
        assert identity.read_text() == f"{second}\n"
    finally:
        agent.stop()
