"""The agent's spare builtin workers: started while it is idle, never beside an operation
that found one ready, and replaced whatever happened to them."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from services.executor.engines.builtin import SETTLE_SECONDS, SPARES
from testkit.agent import AgentProcess
from tests.executor.helpers import create
from tests.executor.test_agent_lifecycle import wait_until

PID_LINE = re.compile(r"started \(pid (\d+)\)")
TICKS = os.sysconf("SC_CLK_TCK")


def workers(agent: AgentProcess) -> dict[int, float]:
    """The agent's live builtin workers: pid -> start time, seconds since boot."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # fields[0] is the state (field 3 of proc(5)), [1] the parent, [19] the start time.
        alive = fields[0] not in "ZX"
        if alive and int(fields[1]) == agent.process.pid and b"builtin_worker" in command:
            found[int(stat.parent.name)] = int(fields[19]) / TICKS
    return found


def boot_seconds(unix_nanoseconds: int) -> float:
    """A wall-clock time as seconds since boot, the clock of /proc start times."""
    return unix_nanoseconds / 1e9 - time.time() + time.clock_gettime(time.CLOCK_BOOTTIME)


def settled(agent: AgentProcess) -> dict[int, float]:
    assert wait_until(lambda: len(workers(agent)) == SPARES, timeout=60)
    return workers(agent)


def test_an_operation_on_an_idle_agent_starts_no_worker_beside_it(agent_factory) -> None:
    agent = agent_factory()
    spares = settled(agent)
    _, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error
    match = PID_LINE.search(outcome.text)
    assert match and int(match.group(1)) in spares, "a ready spare ran the operation"
    ended = boot_seconds(outcome.lines[-1].time.ToNanoseconds())
    replacements = {pid: start for pid, start in settled(agent).items() if pid not in spares}
    assert len(replacements) == 1
    # Its start is at least SETTLE_SECONDS after the last line (less a clock tick or two).
    assert min(replacements.values()) >= ended + SETTLE_SECONDS / 2


def test_a_burst_larger_than_the_pool_completes_and_the_pool_refills(agent_factory) -> None:
    agent = agent_factory()
    settled(agent)
    outcomes = []

    def one() -> None:
        outcomes.append(create(agent, "acme-utils")[1])

    threads = [threading.Thread(target=one) for _ in range(SPARES + 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [outcome.result.success for outcome in outcomes] == [True] * len(threads)
    settled(agent)
    time.sleep(1)  # nothing more starts once the pool is full
    assert len(workers(agent)) == SPARES
    assert len(list((agent.data_dir / "run").glob("*.pgid"))) == SPARES


def test_spares_killed_while_they_wait_are_passed_over(agent_factory) -> None:
    agent = agent_factory()
    killed = settled(agent)
    for pid in killed:
        os.killpg(pid, signal.SIGKILL)
    # Reaped, so the agent knows: a zombie would still look alive to it.
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in killed), 30)
    _, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error
    live = settled(agent)
    assert not set(live) & set(killed)
    groups = {int(marker.stem) for marker in (agent.data_dir / "run").glob("*.pgid")}
    assert groups == set(live), "no marker is left for a worker that is gone"
