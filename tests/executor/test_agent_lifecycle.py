"""Cancel, timeout and concurrency: the process group dies, the environment stays usable."""

from __future__ import annotations

import re
import threading
import time

import grpc
import pytest

from darb.executor.v1 import executor_pb2 as pb
from testkit.agent import start_agent
from testkit.processes import group_members
from tests.executor.helpers import (
    call,
    call_when_idle,
    create,
    prefix_versions,
    stream_lines,
    workspace_dir,
)

PID_LINE = re.compile(r"started \(pid (\d+)\)")


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def start_big_install(agent, environment_id, stub=None):
    """Start installing acme-big (through ``stub``, or a stub of its own); return the open
    stream and the engine's pid once the package is being fetched into the cache (the
    slow part)."""
    request = pb.InstallPackagesRequest(environment_id=environment_id, packages=["acme-big"])
    stub = stub or agent.stub()
    stream = stub.InstallPackages(request, metadata=agent.metadata, timeout=120)
    pid, seen = None, []
    for line in stream_lines(stream):
        text = line.text
        seen.append(text)
        if match := PID_LINE.search(text):
            pid = int(match.group(1))
        if pid and "acme-big" in text and text.startswith("fetching"):
            return stream, pid
    pytest.fail(f"install ended before acme-big was fetched: {seen}")


def assert_unchanged(agent, environment_id, before):
    root = workspace_dir(agent, environment_id)
    assert wait_until(
        lambda: not (root / ".darb").exists() or not any((root / ".darb").iterdir()), 30
    )
    assert (root / "pixi.toml").read_text() == before[0]
    assert (root / "pixi.lock").read_text() == before[1]
    assert prefix_versions(root / ".pixi" / "envs" / "default") == {"acme-core": "1.0"}


def snapshot(agent, environment_id):
    root = workspace_dir(agent, environment_id)
    return (root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()


def test_cancel_kills_the_process_group_and_restores_the_environment(agent_factory):
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    stream, pid = start_big_install(agent, environment_id)
    assert group_members(pid), "the engine runs while lines arrive"
    stream.cancel()
    assert wait_until(lambda: not group_members(pid), timeout=2.0), "group still alive after 2 s"
    assert_unchanged(agent, environment_id, before)
    upgraded = call_when_idle(
        agent, "InstallPackages", environment_id=environment_id, packages=["acme-utils"]
    )
    assert upgraded.result.success, upgraded.result.error


def test_deadline_on_the_call_cancels_like_a_client_cancel(agent_factory):
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    with pytest.raises(grpc.RpcError) as error:
        call(
            agent,
            "InstallPackages",
            timeout=1.0,
            environment_id=environment_id,
            packages=["acme-big"],
        )
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_unchanged(agent, environment_id, before)


def test_operation_timeout_stops_the_work_and_says_timed_out(agent_factory):
    agent = agent_factory(DARB_OPERATION_TIMEOUT="1.5")
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    outcome = call(agent, "InstallPackages", environment_id=environment_id, packages=["acme-big"])
    assert not outcome.result.success
    assert "timed out" in outcome.result.error
    pids = [int(m.group(1)) for line in outcome.lines if (m := PID_LINE.search(line.text))]
    assert pids and not group_members(pids[0])
    assert_unchanged(agent, environment_id, before)
    assert outcome.versions() == {"acme-core": "1.0"}


def test_a_second_operation_on_a_busy_environment_is_aborted(agent_factory):
    agent = agent_factory()
    busy, _ = create(agent, "acme-core ==1.0")
    other, _ = create(agent, "acme-core ==1.0")
    stream, _pid = start_big_install(agent, busy)
    with pytest.raises(grpc.RpcError) as error:
        call(agent, "InstallPackages", environment_id=busy, packages=["acme-utils"])
    assert error.value.code() == grpc.StatusCode.ABORTED
    done = call(agent, "InstallPackages", environment_id=other, packages=["acme-utils"])
    assert done.result.success, "other environments are not blocked"
    rest = list(stream)
    assert rest[-1].result.success, rest[-1].result.error


def test_lines_reach_the_caller_while_the_engine_still_runs(agent_factory):
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    stream, pid = start_big_install(agent, environment_id)
    alive_when_seen = bool(group_members(pid))
    received_after = [m for m in stream]
    assert alive_when_seen
    assert received_after[-1].result.success


def test_concurrent_creates_of_different_environments_all_succeed(shared_agent):
    results: list[bool] = []

    def one() -> None:
        _, outcome = create(shared_agent, "acme-extras")
        results.append(outcome.result.success)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 6


def test_agent_killed_mid_install_takes_its_engine_along_and_restart_repairs(
    agent_factory, channel_url
):
    """SIGKILL the agent mid-install: the engine dies with it, and the next agent
    brings the prefix back to pixi.lock before it runs new work."""
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    _stream, pid = start_big_install(agent, environment_id)
    agent.process.kill()
    agent.process.wait()
    assert wait_until(lambda: not group_members(pid), timeout=2.0)
    root = workspace_dir(agent, environment_id)
    assert (root / ".darb" / "dirty").exists(), "the install was interrupted half-way"
    restarted = start_agent(agent.data_dir, channel_url, token=agent.token)
    try:
        outcome = call(
            restarted, "InstallPackages", environment_id=environment_id, packages=["acme-utils"]
        )
        assert outcome.result.success, outcome.result.error
        assert "restoring" in outcome.text
        assert outcome.versions() == {"acme-core": "1.0", "acme-utils": "1.0"}
        assert prefix_versions(root / ".pixi" / "envs" / "default") == outcome.versions()
        assert before[0] != (root / "pixi.toml").read_text()
    finally:
        restarted.stop()
