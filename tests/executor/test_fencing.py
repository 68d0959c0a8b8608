"""Fencing tokens on the agent (``services/executor/fencing.py``), with a real agent, real
process groups and signals, and its real token files.

The agent records the highest token seen per environment before an operation changes
anything, refuses a lower one with FAILED_PRECONDITION (leaving the environment as it
was), lets the same one through (a retry of the same claim), keeps the token across a
restart, checks it again at the commit point, and ``Fence`` stops an older operation.
"""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from darb.executor.v1 import executor_pb2 as pb
from services.executor import fencing
from testkit.agent import start_agent
from testkit.processes import group_members
from tests.executor.helpers import (
    call,
    call_when_idle,
    new_id,
    prefix_versions,
    stream_lines,
    workspace_dir,
)
from tests.executor.test_agent_lifecycle import PID_LINE, snapshot, wait_until


def created(agent, token: int) -> str:
    environment_id = new_id()
    outcome = call(
        agent,
        "CreateEnvironment",
        environment_id=environment_id,
        name="fenced",
        packages=["acme-core ==1.0"],
        fence_token=token,
    )
    assert outcome.result.success, outcome.result.error
    return environment_id


def refused(agent, method: str, **fields: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(agent, method, **fields)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, error.value.details()
    assert "stale fencing token" in error.value.details()
    return error.value


def state(agent, environment_id: str) -> tuple[tuple[str, str], dict[str, str]]:
    root = workspace_dir(agent, environment_id)
    return snapshot(agent, environment_id), prefix_versions(root / ".pixi/envs/default")


def start_fenced_big_install(agent, environment_id: str, token: int):
    """An install of acme-big with ``token``: the open stream and the engine's pid once
    acme-big is being fetched (the slow part)."""
    request = pb.InstallPackagesRequest(
        environment_id=environment_id, packages=["acme-big"], fence_token=token
    )
    stream = agent.stub().InstallPackages(request, metadata=agent.metadata, timeout=120)
    lines = stream_lines(stream)
    pid = None
    for line in lines:
        if match := PID_LINE.search(line.text):
            pid = int(match.group(1))
        if pid and "acme-big" in line.text and line.text.startswith("fetching"):
            return stream, pid
    pytest.fail("the install ended before acme-big was fetched")


def test_a_lower_token_is_refused_and_changes_nothing_and_the_token_survives_a_restart(
    agent_factory, channel_url: str
):
    agent = agent_factory()
    environment_id = created(agent, token=1)
    token_file = agent.data_dir / "fences" / environment_id
    assert token_file.read_text().strip() == "1", "recorded before the operation ran"
    upgraded = call(
        agent,
        "InstallPackages",
        environment_id=environment_id,
        packages=["acme-utils"],
        fence_token=3,
    )
    assert upgraded.result.success, upgraded.result.error
    before = state(agent, environment_id)

    for method, fields in [
        ("InstallPackages", {"packages": ["acme-big"]}),
        ("RemovePackages", {"packages": ["acme-utils"]}),
        ("DeleteEnvironment", {}),
    ]:
        refused(agent, method, environment_id=environment_id, fence_token=2, **fields)
    refused(agent, "InstallPackages", environment_id=environment_id, packages=["acme-big"])
    assert state(agent, environment_id) == before
    assert token_file.read_text().strip() == "3"

    # The same token again is a retry of the same claim: let through.
    again = call(
        agent,
        "RemovePackages",
        environment_id=environment_id,
        packages=["acme-utils"],
        fence_token=3,
    )
    assert again.result.success, again.result.error
    after_retry = state(agent, environment_id)

    # A new agent process on the same data directory still knows token 3.
    agent.stop()
    with start_agent(agent.data_dir, channel_url, token=agent.token) as restarted:
        refused(
            restarted,
            "InstallPackages",
            environment_id=environment_id,
            packages=["acme-big"],
            fence_token=2,
        )
        assert state(restarted, environment_id) == after_retry
        later = call(
            restarted,
            "InstallPackages",
            environment_id=environment_id,
            packages=["acme-utils"],
            fence_token=4,
        )
        assert later.result.success, later.result.error
        assert token_file.read_text().strip() == "4"


def test_an_operation_overtaken_before_its_commit_point_does_not_commit(agent_factory):
    """The engine is frozen while it installs; meanwhile a higher token is recorded (the
    agent's own ``fencing.raise_to``, as its Fence RPC does first, from this process on
    the agent's real token file, without the stop that Fence adds). Resumed, the
    operation reaches its commit point, refuses to commit, and the environment is as
    it was: files, and the prefix after the rollback."""
    agent = agent_factory()
    environment_id = created(agent, token=5)
    before = state(agent, environment_id)
    stream, pid = start_fenced_big_install(agent, environment_id, token=6)
    os.killpg(pid, signal.SIGSTOP)
    try:
        assert fencing.raise_to(agent.data_dir, environment_id, 7) == 7
    finally:
        os.killpg(pid, signal.SIGCONT)
    results = [message.result for message in stream if message.HasField("result")]
    assert len(results) == 1
    assert not results[0].success
    assert "stale fencing token 6" in results[0].error
    assert {p.name for p in results[0].packages} == {"acme-core"}
    wait_until(lambda: not any((workspace_dir(agent, environment_id) / ".darb").iterdir()), 30)
    assert state(agent, environment_id) == before


def test_fence_stops_an_older_operation_and_reports_the_state_it_left(agent_factory):
    agent = agent_factory()
    environment_id = created(agent, token=1)
    before = state(agent, environment_id)
    stream, pid = start_fenced_big_install(agent, environment_id, token=2)
    os.killpg(pid, signal.SIGSTOP)  # it would never end by itself
    request = pb.FenceRequest(environment_id=environment_id, fence_token=3)
    response = agent.stub().Fence(request, metadata=agent.metadata, timeout=60)
    assert response.fence_token == 3
    assert response.exists
    assert {p.name: p.version for p in response.packages} == {"acme-core": "1.0"}
    assert (response.manifest, response.lockfile) == before[0]
    assert not group_members(pid), "the older operation's engine was stopped"
    assert state(agent, environment_id) == before
    with pytest.raises(grpc.RpcError):
        list(stream)

    lower = pb.FenceRequest(environment_id=environment_id, fence_token=2)
    with pytest.raises(grpc.RpcError) as error:
        agent.stub().Fence(lower, metadata=agent.metadata, timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    refused(
        agent,
        "InstallPackages",
        environment_id=environment_id,
        packages=["acme-utils"],
        fence_token=2,
    )
    newer = call_when_idle(
        agent,
        "InstallPackages",
        environment_id=environment_id,
        packages=["acme-utils"],
        fence_token=4,
    )
    assert newer.result.success, newer.result.error

    missing = pb.FenceRequest(environment_id=new_id(), fence_token=1)
    answer = agent.stub().Fence(missing, metadata=agent.metadata, timeout=30)
    assert not answer.exists and not answer.packages

    bad = pb.FenceRequest(environment_id="../../etc", fence_token=1)
    with pytest.raises(grpc.RpcError) as error:
        agent.stub().Fence(bad, metadata=agent.metadata, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    nobody = agent.stub().Fence
    with pytest.raises(grpc.RpcError) as error:
        nobody(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
