"""Faults of the executor agents that the control plane survives, each caused for real:
an agent SIGKILLed or frozen (SIGSTOP) in the middle of an install, one of several agents
gone, and a job that runs past ``DARB_JOB_TIMEOUT``.

To be sure a fault lands *during* the install of the ~80 MB ``acme-big``, the test waits
for the engine's first line about ``acme-big`` and freezes the engine's process group
with SIGSTOP; the fault under test then hits an operation that cannot have finished.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from darb.v1 import common_pb2
from testkit.agent import AgentProcess, start_agent
from testkit.control_plane import ApiProcess
from tests.api.faults import (
    agent_packages,
    disk_packages,
    group_alive,
    install_engine_pid,
    ready_environment,
    wait_until,
)

LEASE = 3
# Generous bounds for a shared 2-core machine; the point is "bounded", not "fast".
SLACK = 45


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_agent_lost_mid_install(
    fault: str,
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
    channel_url: str,
) -> None:
    """killed: SIGKILL, the stream breaks. frozen: SIGSTOP, the connection stays open and
    only the agent lease can tell. Either way the job fails as "lost" within the lease,
    the environment keeps its packages, and an agent restarted on the same data directory
    and address runs the next job on it."""
    agent = agent_factory()
    api = api_factory(own_database, executors=agent.addr, DARB_AGENT_LEASE_SECONDS=str(LEASE))
    client = api.new_user()
    environment_id = ready_environment(client, "lost", ["acme-core"])
    before = client.packages(environment_id)

    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    os.killpg(pid, signal.SIGSTOP)
    started = time.monotonic()
    agent.process.send_signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)

    final = client.wait(job.id, timeout=LEASE + SLACK)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert f"executor agent {agent.addr} was lost" in final.error
    assert time.monotonic() - started < LEASE + SLACK
    environment = client.get_env(environment_id)
    assert environment.status == common_pb2.ENVIRONMENT_STATUS_READY
    assert client.packages(environment_id) == before

    agent.process.kill()  # the frozen one too: SIGKILL needs no SIGCONT
    agent.process.wait()
    wait_until(lambda: not group_alive(pid), 30, "the engine to die with its agent")
    with start_agent(agent.data_dir, channel_url, agent.token, addr=agent.addr) as back:
        again = client.install(environment_id, ["acme-big"])
        assert client.wait(again.id).status == common_pb2.JOB_STATUS_COMPLETED
        stored = client.packages(environment_id)
        assert set(stored) == set(before) | {"acme-big"}
        assert agent_packages(back, environment_id) == stored
        assert disk_packages(back, environment_id) == stored


def test_unreachable_agent_is_skipped(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """With two agents and one SIGKILLed: new environments all go to the live one, jobs
    of an environment that lives on the dead one fail as "lost" after the lease (they
    cannot move: the environment is on that agent's disk), and the live one keeps
    working."""
    live, dead = agent_factory(), agent_factory()
    executors = f"{live.addr},{dead.addr}"
    api = api_factory(own_database, executors=executors, DARB_AGENT_LEASE_SECONDS=str(LEASE))
    client = api.new_user()
    on_dead = ""
    for attempt in range(12):  # the handler places new environments at random
        environment_id = ready_environment(client, f"spread{attempt}", ["acme-core"])
        if (dead.data_dir / "environments" / environment_id).is_dir():
            on_dead = environment_id
            break
    assert on_dead, "no environment was placed on the second agent"

    dead.process.kill()
    dead.process.wait()
    # Right after the kill the dead agent still counts as recently heard from: creates
    # sent to it are refused and placed again on the live one.
    placed = [ready_environment(client, f"after{n}", ["acme-core"]) for n in range(8)]
    assert all((live.data_dir / "environments" / p).is_dir() for p in placed)
    stuck = client.install(on_dead, ["acme-utils"])
    final = client.wait(stuck.id, timeout=LEASE + SLACK)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert f"executor agent {dead.addr} was lost" in final.error
    assert client.get_env(on_dead).status == common_pb2.ENVIRONMENT_STATUS_READY
    fine = client.install(placed[0], ["acme-utils"])
    assert client.wait(fine.id).status == common_pb2.JOB_STATUS_COMPLETED


def test_job_timeout_kills_the_process_group(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """A job past ``DARB_JOB_TIMEOUT`` ends FAILED "timed out", and cancelling the agent
    stream kills the engine's whole process group (frozen here, so it cannot finish)."""
    agent = agent_factory()
    api = api_factory(own_database, executors=agent.addr, DARB_JOB_TIMEOUT="20")
    client = api.new_user()
    environment_id = ready_environment(client, "slow", ["acme-core"])
    before = client.packages(environment_id)

    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    os.killpg(pid, signal.SIGSTOP)
    final = client.wait(job.id, timeout=20 + SLACK)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert "timed out" in final.error
    wait_until(lambda: not group_alive(pid), 30, "the engine's process group to be killed")
    assert client.packages(environment_id) == before
    after = client.install(environment_id, ["acme-utils"])
    assert client.wait(after.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert disk_packages(agent, environment_id) == client.packages(environment_id)
