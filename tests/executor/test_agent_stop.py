"""SIGTERM ends the agent within its grace period plus a few seconds, whatever runs then,
and leaves every environment as its last committed state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from darb.executor.v1 import executor_pb2_grpc
from services.executor.server import SHUTDOWN_GRACE_SECONDS
from testkit.processes import PROJECT_ROOT, group_members
from tests.executor.helpers import create, prefix_versions, workspace_dir
from tests.executor.test_agent_lifecycle import snapshot, start_big_install
from tests.executor.test_spare_workers import settled

# What the agent may take beyond its grace period, from the signal to its exit.
STOP_MARGIN_SECONDS = 5.0


def stopped_within(agent, seconds: float) -> float:
    """Seconds from now until the agent process exits; fails the test past ``seconds``
    (and kills the agent, so that the test run goes on)."""
    started = time.monotonic()
    try:
        agent.process.wait(seconds)
    except subprocess.TimeoutExpired:
        agent.process.kill()
        agent.process.wait()
        pytest.fail(f"the agent still ran {seconds:g} s after SIGTERM:\n{agent.log_text()[-3000:]}")
    return time.monotonic() - started


def assert_rolled_back(agent, environment_id: str, before: tuple[str, str]) -> None:
    """The committed files as before, the prefix back to them, nothing left half-done."""
    root = workspace_dir(agent, environment_id)
    assert snapshot(agent, environment_id) == before
    assert not any((root / ".darb").iterdir()), "a dirty marker or transaction is left"
    assert prefix_versions(root / ".pixi" / "envs" / "default") == {"acme-core": "1.0"}
    assert not (root / ".pixi" / "envs" / "default" / "share" / "acme-big").exists()


def test_sigterm_while_a_big_package_is_extracted_stops_within_the_grace(agent_factory):
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    stream, pid = start_big_install(agent, environment_id)
    # A stopped engine outlasts any grace, like the 240 MB package of the bug report did.
    os.killpg(pid, signal.SIGSTOP)
    agent.process.send_signal(signal.SIGTERM)
    took = stopped_within(agent, SHUTDOWN_GRACE_SECONDS + STOP_MARGIN_SECONDS)
    assert agent.process.returncode == 0, agent.log_text()[-3000:]
    assert took >= SHUTDOWN_GRACE_SECONDS - 0.5, "the operation had its grace period"
    with pytest.raises(grpc.RpcError):
        list(stream)
    assert not group_members(pid)
    assert "outcome=cancelled" in agent.log_text()
    assert_rolled_back(agent, environment_id, before)


@pytest.mark.parametrize(
    ("leave", "cancel_after"),
    [
        ("cancel", -0.03),
        ("cancel", 0.0),
        ("cancel", 0.02),
        ("cancel", 0.05),
        ("cancel", 0.08),
        ("disconnect", -0.01),
        ("disconnect", 0.03),
        ("disconnect", 0.07),
    ],
)
def test_sigterm_while_the_caller_cancels_its_stream_stops_within_the_grace(
    agent_factory, leave: str, cancel_after: float
):
    """The control plane gives up on a stream (a cancel, or a closed connection) about
    when the agent is told to stop: ``cancel_after`` seconds after SIGTERM (before it
    when negative). An idle spare worker is left for the stop to end as well."""
    agent = agent_factory()
    environment_id, _ = create(agent, "acme-core ==1.0")
    before = snapshot(agent, environment_id)
    settled(agent)
    channel = grpc.insecure_channel(agent.addr)
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    stream, pid = start_big_install(agent, environment_id, stub)
    give_up = stream.cancel if leave == "cancel" else channel.close
    if cancel_after < 0:
        give_up()
        time.sleep(-cancel_after)
    agent.process.send_signal(signal.SIGTERM)
    if cancel_after >= 0:
        time.sleep(cancel_after)
        give_up()
    stopped_within(agent, SHUTDOWN_GRACE_SECONDS + STOP_MARGIN_SECONDS)
    channel.close()
    assert agent.process.returncode == 0, agent.log_text()[-3000:]
    assert not group_members(pid)
    assert_rolled_back(agent, environment_id, before)


def test_the_backstop_ends_a_process_that_does_not_stop_and_shows_where_it_hung():
    script = (
        "import time\n"
        "from shared.lifecycle import exit_after\n"
        "exit_after(0.5)\n"
        "time.sleep(60)  # stands in for a stop that never ends\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    assert "did not stop within 0.5s" in done.stderr
    assert 'File "<string>", line 4 in <module>' in done.stderr, "the main thread's stack"
