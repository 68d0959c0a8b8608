"""Faults of the executor agents that the control plane survives, each caused for real:
an agent SIGKILLed or frozen (SIGSTOP) in the middle of an install, one of several agents
gone, and a job that runs past ``DARB_JOB_TIMEOUT``.

To be sure a fault lands *during* the install of the ~80 MB ``acme-big``, the test waits
for the engine's first line about ``acme-big`` and freezes the engine's process group
with SIGSTOP; the fault under test then hits an operation that cannot have finished.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from darb.executor.v1 import executor_pb2
from darb.v1 import common_pb2
from tests.api.control_plane import ApiProcess, Client
from tests.support.agent import AgentProcess, start_agent
from tests.support.postgres import fresh_database

LEASE = 3
# Generous bounds for a shared 2-core machine; the point is "bounded", not "fast".
SLACK = 45
ENGINE_LINE = re.compile(r"darb: builtin engine \((\w+)\) started \(pid (\d+)\)")


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of this test only (requested before ``api_factory``, so it outlives the
    control planes): no other control plane claims the jobs of these tests."""
    with fresh_database() as url:
        yield url


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def install_engine_pid(client: Client, job_id: str) -> int:
    """The pid of the install's engine, once the engine has started on ``acme-big``."""
    found: list[int] = []

    def started() -> bool:
        logs = client.get_job(job_id).logs
        pids = [int(m[2]) for m in ENGINE_LINE.finditer(logs) if m[1] == "install"]
        found[:] = pids
        return bool(pids) and "acme-big" in logs.split(f"(pid {pids[-1]})", 1)[1]

    wait_until(started, 120, "the engine to start installing acme-big")
    return found[-1]


def group_members(pgid: int) -> list[str]:
    """The live (non-zombie) processes in the process group ``pgid``, as "pid state"."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(f"{stat.parent.name} {fields[0]}")
    return members


def group_alive(pgid: int) -> bool:
    members = group_members(pgid)
    if members:
        print(f"process group {pgid}: {members}")
    return bool(members)


def ready_environment(client: Client, name: str, packages: list[str]) -> str:
    created = client.create(name, packages)
    assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    return created.environment.id


def disk_packages(agent: AgentProcess, environment_id: str) -> dict[str, str]:
    """What the prefix on the agent's disk holds, read from its ``conda-meta``."""
    meta = agent.data_dir / "environments" / environment_id / ".pixi/envs/default/conda-meta"
    records = [json.loads(path.read_text()) for path in meta.glob("*.json")]
    return {record["name"]: record["version"] for record in records}


def agent_packages(agent: AgentProcess, environment_id: str) -> dict[str, str]:
    """What the agent reports from the environment's ``pixi.lock``."""
    request = executor_pb2.ListPackagesRequest(environment_id=environment_id)
    response = agent.stub().ListPackages(request, metadata=agent.metadata, timeout=30)
    return {package.name: package.version for package in response.packages}


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
    placed = [ready_environment(client, f"after{n}", ["acme-core"]) for n in range(4)]
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
