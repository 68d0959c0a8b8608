"""DARB_API_PROCESSES: several processes serve RPCs on one port, and jobs submitted,
watched and cancelled through any of them behave as with one process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from darb.v1 import common_pb2, users_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from testkit.processes import live_processes

CONNECTIONS = 12


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _python_processes(pid: int) -> list[int]:
    """The control plane and its RPC workers (``setpriv`` execs into Python)."""
    return [pid, *_children(pid)]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _accepted_connections(port: int) -> dict[str, int]:
    """inode -> 1 for every established TCP connection whose local port is ``port``."""
    accepted = {}
    lines = [
        line
        for table in ("/proc/net/tcp", "/proc/net/tcp6")  # gRPC accepts on IPv4-mapped v6
        for line in Path(table).read_text().splitlines()[1:]
    ]
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            accepted[fields[9]] = 1
    return accepted


def _clients(api: ApiProcess, count: int) -> list[Client]:
    """``count`` logged-in clients, each on its own TCP connection."""
    token = api.admin().token
    clients = []
    for _ in range(count):
        channel = grpc.insecure_channel(api.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        client = Client(channel)
        client.token = token
        clients.append(client)
    return clients


def test_connections_are_spread_over_the_processes_and_jobs_run(
    api_factory: Callable[..., ApiProcess], own_database: str, shared_agent: AgentProcess
) -> None:
    # A poll interval far above the test's waits: jobs submitted in a worker must wake
    # the primary's dispatcher by NOTIFY.
    api = api_factory(own_database, DARB_API_PROCESSES="2", DARB_POLL_INTERVAL="120")
    processes = _python_processes(api.process.pid)
    assert len(processes) == 2
    clients = _clients(api, CONNECTIONS)
    for index, client in enumerate(clients):
        me = client.call(client.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
        assert me.user.username == "admin", index
    port = int(api.addr.rsplit(":", 1)[1])
    established = _accepted_connections(port)
    served = [len(_socket_inodes(pid) & established.keys()) for pid in processes]
    assert sum(served) >= CONNECTIONS and all(served), served

    started = time.monotonic()
    jobs = [
        client.create(f"spread-{index}", ["acme-core ==1.0"]).job
        for index, client in enumerate(clients[:4])
    ]
    for job in jobs:
        finished = clients[0].wait(job.id, timeout=60)
        assert finished.status == common_pb2.JOB_STATUS_COMPLETED, finished.error
    assert time.monotonic() - started < 60


def test_workers_stop_with_the_primary(
    api_factory: Callable[..., ApiProcess], own_database: str
) -> None:
    api = api_factory(own_database, DARB_API_PROCESSES="3")
    workers = _children(api.process.pid)
    assert len(workers) == 2
    api.process.send_signal(signal.SIGKILL)
    api.process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while live_processes().keys() & set(workers):
        assert time.monotonic() < deadline, "RPC workers outlived the primary"
        time.sleep(0.1)


def test_workers_share_the_primarys_embedded_server(
    api_factory: Callable[..., ApiProcess], tmp_path: Path
) -> None:
    """With no DARB_DATABASE_URL the primary starts the embedded server and hands its URL
    to the workers (one that started its own would find the data locked and exit)."""
    api = api_factory("", DARB_API_PROCESSES="2")
    url = (tmp_path / "data" / "postgres.url").read_text().strip()
    [worker] = [
        pid
        for pid in _children(api.process.pid)
        if b"services.api" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    assert f"DARB_DATABASE_URL={url}".encode() in environ
    clients = _clients(api, CONNECTIONS)
    for client in clients:
        me = client.call(client.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
        assert me.user.username == "admin"
    port = int(api.addr.rsplit(":", 1)[1])
    assert len(_socket_inodes(worker) & _accepted_connections(port).keys()) > 0
