"""Helpers of the fault, load and recovery tests: waiting, process groups, stats."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from darb.executor.v1 import executor_pb2
from darb.v1 import common_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from testkit.processes import live_processes

ENGINE_LINE = re.compile(r"darb: builtin engine \((\w+)\) started \(pid (\d+)\)")
STATS = re.compile(r"darb api stats: (\d+) watch subscriptions, (\d+) asyncio tasks")


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


def group_alive(pgid: int) -> bool:
    processes = live_processes().items()
    members = [f"{pid} {state}" for pid, (state, group) in processes if group == pgid]
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


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]


def stats(api: ApiProcess) -> tuple[int, int]:
    """Asks the control plane (SIGUSR1) for its subscription and task counts."""
    seen = len(STATS.findall(api.log_text()))
    api.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: len(STATS.findall(api.log_text())) > seen, 30, "the stats line")
    subscriptions, tasks = STATS.findall(api.log_text())[-1]
    return int(subscriptions), int(tasks)
