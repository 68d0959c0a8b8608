"""Faults of the control plane itself, each caused for real: SIGKILL mid-job and restart,
SIGTERM (graceful shutdown: finish, or hand back), and 1,000 watchers that go away.

Where a job must still be running when the fault hits, the test freezes the engine's
process group (SIGSTOP) once it works on ``acme-big``: the job then cannot finish first.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from benchmarks.api_bench import logs_agent_env
from darb.v1 import common_pb2
from services.api.app import STOP_MARGIN
from services.api.scheduling.dispatcher import FINISH_ON_SHUTDOWN
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from tests.api.faults import (
    free_address,
    group_alive,
    install_engine_pid,
    ready_environment,
    rss_kib,
    stats,
    wait_until,
)

SLACK = 30


def test_control_plane_killed_mid_job(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """SIGKILL: the job's lease runs out and the restarted control plane fails it with
    that reason; the lines stored before the kill stay; the agent stopped the orphaned
    operation (its stream broke) and rolled it back; the next job on the environment runs
    (after ABORTED retries while the agent still repairs)."""
    agent = agent_factory()
    settings = {"executors": agent.addr, "DARB_JOB_LEASE": "3", "DARB_POLL_INTERVAL": "1"}
    first = api_factory(own_database, **settings)
    client = first.new_user()
    environment_id = ready_environment(client, "orphan", ["acme-core"])
    before = client.packages(environment_id)
    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    os.killpg(pid, signal.SIGSTOP)
    stored = client.get_job(job.id).logs
    first.process.kill()
    first.process.wait()

    second = api_factory(own_database, **settings)
    client = Client(grpc.insecure_channel(second.addr), token=client.token)
    final = client.wait(job.id, timeout=SLACK)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert "lease expired" in final.error
    assert final.logs.startswith(stored)
    wait_until(lambda: not group_alive(pid), SLACK, "the agent to kill the orphaned engine")
    later = client.install(environment_id, ["acme-utils"])
    assert client.wait(later.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert set(client.packages(environment_id)) == set(before) | {"acme-utils"}


def test_a_control_plane_whose_lease_ran_out_adds_no_lines(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    """SIGSTOP on the control plane mid-job, past its lease: another control plane fails
    the job. Meanwhile the job's tool goes on printing (the benchmarks' stand-in pixi,
    20 lines/s), and those lines wait in the stalled one's socket. Resumed, it must not
    store them after the job's end."""
    agent = agent_factory(**logs_agent_env(tmp_path / "standin"))
    settings = {"executors": agent.addr, "DARB_JOB_LEASE": "3", "DARB_POLL_INTERVAL": "1"}
    first = api_factory(own_database, **settings)
    client = first.new_user()
    job = client.create("stalled", ["lines-400", "pace-20"]).job
    wait_until(lambda: "bench 1 " in client.get_job(job.id).logs, SLACK, "the tool to print")
    first.process.send_signal(signal.SIGSTOP)
    try:
        second = api_factory(own_database, **settings)
        client = Client(grpc.insecure_channel(second.addr), token=client.token)
        final = client.wait(job.id, timeout=SLACK)
        assert "lease expired" in final.error
    finally:
        first.process.send_signal(signal.SIGCONT)
    dropped = f"job {job.id} ended elsewhere: "

    def handled() -> bool:
        return dropped in first.log_text() or client.get_job(job.id).logs != final.logs

    wait_until(handled, SLACK, "the stalled control plane to handle the lines it held")
    assert client.get_job(job.id).logs == final.logs
    assert dropped in first.log_text()


def test_sigterm_finishes_running_jobs_and_takes_no_new_ones(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """Within the grace the running job completes; the queued one is not claimed and
    runs on the next control plane."""
    agent = agent_factory()
    settings = {"executors": agent.addr, "DARB_WORKER_CONCURRENCY": "1"}
    api = api_factory(own_database, DARB_SHUTDOWN_GRACE_SECONDS="120", **settings)
    client = api.new_user()
    running_env = ready_environment(client, "running", ["acme-core"])
    queued_env = ready_environment(client, "queued", ["acme-core"])
    running = client.install(running_env, ["acme-big"])
    install_engine_pid(client, running.id)
    queued = client.install(queued_env, ["acme-utils"])

    started = time.monotonic()
    assert api.stop(signal.SIGTERM, timeout=120 + SLACK) == 0
    assert time.monotonic() - started < 120 + SLACK
    later = api_factory(own_database, **settings)
    client = Client(grpc.insecure_channel(later.addr), token=client.token)
    assert client.get_job(running.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert client.wait(queued.id).status == common_pb2.JOB_STATUS_COMPLETED


def test_sigterm_hands_back_a_job_that_cannot_finish(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """Past the grace the job is stopped on the agent (its process group killed, the
    environment rolled back) and FAILED with the shutdown reason; the exit is prompt."""
    agent = agent_factory()
    grace = 2
    api = api_factory(own_database, executors=agent.addr, DARB_SHUTDOWN_GRACE_SECONDS=str(grace))
    client = api.new_user()
    environment_id = ready_environment(client, "handed-back", ["acme-core"])
    before = client.packages(environment_id)
    job = client.install(environment_id, ["acme-big"])
    pid = install_engine_pid(client, job.id)
    os.killpg(pid, signal.SIGSTOP)

    started = time.monotonic()
    assert api.stop(signal.SIGTERM, timeout=grace + SLACK) == 0
    assert time.monotonic() - started < grace + SLACK
    wait_until(lambda: not group_alive(pid), SLACK, "the agent to kill the engine")
    later = api_factory(own_database, executors=agent.addr)
    client = Client(grpc.insecure_channel(later.addr), token=client.token)
    final = client.get_job(job.id)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert "shut down before the job finished" in final.error
    assert client.packages(environment_id) == before


def watch_and_vanish(api: ApiProcess, token: str, job_id: str, cycles: int) -> None:
    """Each cycle: a new connection, a WatchJob that gets its first message, then the
    connection is closed under it."""
    for _ in range(cycles):
        client = Client(grpc.insecure_channel(api.addr), token=token)
        stream = client.watch(job_id, timeout=30)
        assert next(stream).job.status == common_pb2.JOB_STATUS_RUNNING
        client.channel.close()


def test_gone_watchers_cost_nothing(
    own_database: str, api_factory: Callable[..., ApiProcess]
) -> None:
    """1,000 watchers of a running job disconnect: no subscription or task is left and
    the RSS stays flat. The job stays RUNNING because its agent never answers (nothing
    listens at its address) and the agent lease is long."""
    api = api_factory(own_database, executors=free_address(), DARB_AGENT_LEASE_SECONDS="600")
    client = api.new_user()
    job = client.create("watched", ["acme-core"]).job
    wait_until(
        lambda: client.get_job(job.id).status == common_pb2.JOB_STATUS_RUNNING, SLACK, "running"
    )
    watching = client.watch(job.id)
    next(watching)
    assert stats(api)[0] == 1  # the count sees a live watcher
    watching.cancel()
    watch_and_vanish(api, client.token, job.id, 100)  # warm-up: caches, pools, arenas
    wait_until(lambda: stats(api)[0] == 0, SLACK, "the warm-up watchers to be gone")
    _, tasks_before = stats(api)
    rss_before = rss_kib(api.process.pid)

    watch_and_vanish(api, client.token, job.id, 1000)
    wait_until(lambda: stats(api)[0] == 0, SLACK, "every watcher's subscription to be gone")
    _, tasks_after = stats(api)
    rss_after = rss_kib(api.process.pid)
    assert tasks_after <= tasks_before + 2, (tasks_before, tasks_after)
    assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
    assert client.get_job(job.id).status == common_pb2.JOB_STATUS_RUNNING


def test_sigterm_ends_a_control_plane_whose_agent_stopped_answering(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """The whole agent frozen (SIGSTOP) while the control plane streams a job from it:
    SIGTERM still ends the control plane within its grace plus the recording of the
    handed-back job and its margin (the backstop's deadline), with the job FAILED."""
    agent = agent_factory()
    grace = 2
    api = api_factory(own_database, executors=agent.addr, DARB_SHUTDOWN_GRACE_SECONDS=str(grace))
    client = api.new_user()
    environment_id = ready_environment(client, "frozen-agent", ["acme-core"])
    job = client.install(environment_id, ["acme-big"])
    install_engine_pid(client, job.id)
    agent.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert api.stop(signal.SIGTERM, timeout=grace + SLACK) == 0, api.log_text()[-3000:]
        assert time.monotonic() - started < grace + FINISH_ON_SHUTDOWN + STOP_MARGIN
    finally:
        agent.process.send_signal(signal.SIGCONT)
    later = api_factory(own_database, executors=agent.addr)
    client = Client(grpc.insecure_channel(later.addr), token=client.token)
    final = client.get_job(job.id)
    assert final.status == common_pb2.JOB_STATUS_FAILED
    assert "shut down before the job finished" in final.error
