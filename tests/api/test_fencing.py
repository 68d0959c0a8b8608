"""Fencing (issue 17 point 1), with real processes and real signals: a control plane is
stopped (SIGSTOP) while the agent holds its operation, past its lease; a second control
plane takes the job over (``scheduling/takeover.py``: it raises the environment's fencing
token, fences the agent, and records the end from what the agent then has); the first
is resumed (SIGCONT). Whatever the order of the operation's commit and the takeover,
the environment's packages on the agent's disk (ListPackages of the agent) and in the
database (ListPackages through the API) agree, also after the resumed control plane
has handled the answer it held, and the next job runs.

The operation is an install of ``acme-big`` (80 MB, evicted from the agent's cache so
that it is fetched and extracted again):

- ``frozen``: its engine is also stopped, so it can only commit if the fence fails;
  the takeover stops it, the job is FAILED and nothing changed;
- ``committed``: it finishes while the control plane is stopped, before the takeover
  (the bug of the issue: the job was recorded FAILED with the old package list); the
  takeover finds it committed and records it COMPLETED with acme-big;
- ``racing``: the takeover comes while it still runs: either order is fine, as long as
  both sides agree.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import grpc
import pytest

from darb.v1 import common_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from tests.api.faults import (
    agent_packages,
    disk_packages,
    group_alive,
    install_engine_pid,
    ready_environment,
    wait_until,
)

SLACK = 60
TERMINAL = (
    common_pb2.JOB_STATUS_COMPLETED,
    common_pb2.JOB_STATUS_FAILED,
    common_pb2.JOB_STATUS_CANCELLED,
)


def agree(client: Client, agent: AgentProcess, environment_id: str) -> dict[str, str]:
    """The packages the database lists are those on the agent's disk, lock and prefix."""
    recorded = client.packages(environment_id)
    assert recorded == agent_packages(agent, environment_id)
    assert recorded == disk_packages(agent, environment_id)
    return recorded


@pytest.mark.parametrize("scenario", ["frozen", "committed", "racing", "racing"])
def test_a_stalled_control_plane_never_commits_after_a_takeover(
    scenario: str,
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory()
    settings = {"executors": agent.addr, "DARB_JOB_LEASE": "3", "DARB_POLL_INTERVAL": "1"}
    first = api_factory(own_database, **settings)
    client = first.new_user()
    environment_id = ready_environment(client, "fenced", ["acme-core"])
    before = agree(client, agent, environment_id)
    agent.evict_cached("acme-big")

    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    if scenario == "frozen":
        os.killpg(pid, signal.SIGSTOP)
    first.process.send_signal(signal.SIGSTOP)
    try:
        if scenario == "committed":
            wait_until(
                lambda: "acme-big" in agent_packages(agent, environment_id),
                SLACK,
                "the install to commit on the agent while its control plane is stopped",
            )
        second = api_factory(own_database, **settings)
        client = Client(grpc.insecure_channel(second.addr), token=client.token)
        final = client.wait(job.id, timeout=SLACK)
        recorded = agree(client, agent, environment_id)
    finally:
        first.process.send_signal(signal.SIGCONT)
        if scenario == "frozen" and group_alive(pid):
            os.killpg(pid, signal.SIGCONT)

    if scenario == "frozen":
        assert final.status == common_pb2.JOB_STATUS_FAILED, final.error
        assert "lease expired" in final.error
        assert recorded == before
        assert not group_alive(pid), "the takeover stopped the stalled operation"
    elif scenario == "committed":
        assert final.status == common_pb2.JOB_STATUS_COMPLETED, final.error
        assert "acme-big" in recorded
    else:
        assert final.status in (common_pb2.JOB_STATUS_COMPLETED, common_pb2.JOB_STATUS_FAILED)
        assert ("acme-big" in recorded) == (final.status == common_pb2.JOB_STATUS_COMPLETED)
    assert f"job {job.id} taken over" in second.log_text()

    # The resumed control plane handles what it held, and the agent has ended the
    # stalled operation: nothing changes any more.
    wait_until(lambda: not group_alive(pid), SLACK, "the stalled operation to be gone")
    ended = f"operation ended environment_id={environment_id} kind=install"
    wait_until(lambda: ended in agent.log_text(), SLACK, "the agent to end the operation")
    time.sleep(3)  # the resumed control plane's late answer, if any, has come by now
    assert client.get_job(job.id).status == final.status
    assert agree(client, agent, environment_id) == recorded

    later = client.install(environment_id, ["acme-utils"])
    assert client.wait(later.id, timeout=SLACK).status == common_pb2.JOB_STATUS_COMPLETED
    assert set(agree(client, agent, environment_id)) == set(recorded) | {"acme-utils"}


def test_an_agent_that_cannot_be_fenced_fails_the_job_and_the_next_job_corrects_it(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """The agent is stopped too (SIGSTOP, with its engine), so the takeover cannot fence
    it: the job stays RUNNING while the takeover tries again, then fails naming the agent
    once DARB_AGENT_LEASE_SECONDS have passed since the lease ran out, its stored
    packages those from before. Resumed, the stalled operation may still commit (the
    agent never heard the new token); the environment's next job then stores what the
    disk has, and both sides agree again."""
    agent = agent_factory()
    settings = {"executors": agent.addr, "DARB_JOB_LEASE": "3", "DARB_POLL_INTERVAL": "1"}
    first = api_factory(own_database, **settings)
    client = first.new_user()
    environment_id = ready_environment(client, "unfenced", ["acme-core"])
    before = agree(client, agent, environment_id)
    agent.evict_cached("acme-big")
    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    stopped = [(os.killpg, pid), (os.kill, agent.process.pid), (os.kill, first.process.pid)]
    for kill, target in stopped:
        kill(target, signal.SIGSTOP)
    try:
        second = api_factory(own_database, DARB_AGENT_LEASE_SECONDS="4", **settings)
        client = Client(grpc.insecure_channel(second.addr), token=client.token)
        final = client.wait(job.id, timeout=2 * SLACK)
        assert final.status == common_pb2.JOB_STATUS_FAILED
        assert f"its agent {agent.addr} could not be reached" in final.error
        assert client.packages(environment_id) == before
    finally:
        for kill, target in reversed(stopped):
            kill(target, signal.SIGCONT)

    later = client.install(environment_id, ["acme-utils"])
    assert client.wait(later.id, timeout=2 * SLACK).status == common_pb2.JOB_STATUS_COMPLETED
    recorded = agree(client, agent, environment_id)
    assert "acme-utils" in recorded
