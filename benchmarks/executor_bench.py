"""Agent overhead: a create through the agent vs py-rattler's own solve + install.

Both sides install the same 100 packages from the same local channel into a new prefix
with a cold package cache, in the same run, so the ratio compares like with like.
Run with ``make bench``; prints a table and returns it for ``docs/benchmarks.md``.

The warm-cache rows create the same environment again with every package already in
the cache. 100 tiny packages cost little to extract, so their cold create is mostly
per-package work that a warm one repeats (linking, one fsync'ed ``conda-meta/*.json``
each): py-rattler's own warm / cold ratio on them, measured in the same rounds, is the
floor for any service built on it. The judged ratio is that of a real environment's
packages (``real_environment``), whose cold create extracts 42.8 MB.
Each round starts after a pause, so that the agent's spare workers, which it starts
while idle, are ready and do not run beside py-rattler's measured solve + install.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import real_environment
from darb.executor.v1 import executor_pb2 as pb
from testkit.agent import AgentProcess, start_agent
from testkit.channel import many_packages_channel

ROUNDS = 9
REAL_ROUNDS = 5  # each cold round extracts the real environment
PACKAGES = 100
SETTLE_SECONDS = 1.5  # the agent refills its spares 0.5 s after an operation


# py-rattler alone: solve + install timed inside one process (imports excluded). It runs
# in a child that ends with os._exit, as async rattler calls can crash at interpreter exit.
RATTLER_ALONE = """
import asyncio, json, os, sys, time
from rattler import Gateway, install, solve

async def create(channel, specs, prefix, cache):
    records = await solve(sources=[channel], specs=specs, gateway=Gateway(),
                          platforms=["linux-64", "noarch"])
    await install(records, target_prefix=prefix, cache_dir=cache, show_progress=False)

channel, specs, prefix, cache = json.loads(sys.argv[1])
started = time.perf_counter()
asyncio.run(create(channel, specs, prefix, cache))
print(time.perf_counter() - started, flush=True)
os._exit(0)
"""


def write_back() -> None:
    """Writes every dirty page to disk before a timed run. Installing fsyncs each record
    in ``conda-meta/``, and on ext4 such an fsync also writes out data still dirty from
    earlier runs: without this, a warm create paid for the files the cold create before
    it had extracted (a large part of its time here, see docs/benchmarks.md), and each run
    for the one before."""
    os.sync()


def rattler_seconds(channel: str, specs: list[str], scratch: Path) -> tuple[float, float]:
    """py-rattler alone: one solve + install with a cold cache, then one into a new prefix
    with that cache warm; the seconds of each."""
    run = scratch / uuid.uuid4().hex
    seconds = []
    for prefix in ("cold", "warm"):
        write_back()
        arguments = json.dumps([channel, specs, str(run / prefix), str(run / "pkgs")])
        command = [sys.executable, "-c", RATTLER_ALONE, arguments]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds.append(float(done.stdout))
    shutil.rmtree(run)
    return seconds[0], seconds[1]


def agent_seconds(
    agent: AgentProcess, specs: list[str], cold: bool, installed: int | None = None
) -> float:
    """One CreateEnvironment through the agent, timed from request to result; it must
    install ``installed`` packages (by default one per spec)."""
    if cold:
        shutil.rmtree(agent.data_dir / "pkgs", ignore_errors=True)
        (agent.data_dir / "pkgs").mkdir()
    write_back()
    request = pb.CreateEnvironmentRequest(
        environment_id=str(uuid.uuid4()), name="bench", packages=specs
    )
    started = time.perf_counter()
    messages = list(agent.stub().CreateEnvironment(request, metadata=agent.metadata))
    elapsed = time.perf_counter() - started
    result = messages[-1].result
    if not result.success or len(result.packages) != (installed or len(specs)):
        raise RuntimeError(f"benchmark create failed: {result.error}")
    return elapsed


def measure(scratch: Path) -> list[tuple[str, str, str]]:
    """Rounds alternate (py-rattler cold and warm, agent cold, agent warm) so that the
    machine's ups and downs (its disk above all) fall on both sides of each comparison."""
    channel, specs = many_packages_channel(scratch / "channel", PACKAGES)
    rattler, rattler_warm, cold, warm = [], [], [], []
    with start_agent(scratch / "agent", channel, token="bench") as agent:
        agent_seconds(agent, specs, cold=True)  # warm up the agent's imports and caches
        for _ in range(ROUNDS):
            time.sleep(SETTLE_SECONDS)
            alone = rattler_seconds(channel, specs, scratch)
            rattler.append(alone[0])
            rattler_warm.append(alone[1])
            cold.append(agent_seconds(agent, specs, cold=True))
            warm.append(agent_seconds(agent, specs, cold=False))
    real_channel = real_environment.add_to_channel(scratch / "real-channel")
    real_specs, real_count = [real_environment.ROOT_SPEC], len(real_environment.PACKAGES)
    real_cold, real_warm = [], []
    with start_agent(scratch / "agent-real", real_channel, token="bench") as agent:
        agent_seconds(agent, real_specs, cold=False, installed=real_count)  # first-run costs
        for _ in range(REAL_ROUNDS):
            time.sleep(SETTLE_SECONDS)
            real_cold.append(agent_seconds(agent, real_specs, True, real_count))
            real_warm.append(agent_seconds(agent, real_specs, False, real_count))
    medians = (rattler, rattler_warm, cold, warm, real_cold, real_warm)
    rattler_ms, rattler_warm_ms, cold_ms, warm_ms, real_cold_ms, real_warm_ms = (
        1000 * statistics.median(x) for x in medians
    )
    added_ms = 1000 * statistics.median(c - r for c, r in zip(cold, rattler, strict=True))
    return [
        ("py-rattler solve + install, 100 packages, cold cache (ms)", f"{rattler_ms:.0f}", "-"),
        ("py-rattler, same packages, warm cache (ms)", f"{rattler_warm_ms:.0f}", "-"),
        ("py-rattler alone, warm / cold (ratio)", f"{rattler_warm_ms / rattler_ms:.2f}", "-"),
        ("agent create, same packages, cold cache (ms)", f"{cold_ms:.0f}", "-"),
        ("agent added time per create (ms, median of paired rounds)", f"{added_ms:.0f}", "< 150"),
        ("agent / py-rattler (ratio)", f"{cold_ms / rattler_ms:.2f}", "-"),
        ("agent create, same packages, warm cache (ms)", f"{warm_ms:.0f}", "-"),
        ("agent create, warm cache / cold cache (ratio)", f"{warm_ms / cold_ms:.2f}", "-"),
        (f"agent create of {real_environment.DESCRIPTION}, cold cache (ms)",
         f"{real_cold_ms:.0f}", "-"),
        ("agent create, same environment, warm cache (ms)", f"{real_warm_ms:.0f}", "-"),
        ("agent create of the flask environment, warm / cold (ratio)",
         f"{real_warm_ms / real_cold_ms:.2f}", "<= 0.3"),
    ]  # fmt: skip


def main() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="darb-bench-") as scratch:
        rows = measure(Path(scratch))
    print(
        f"\nexecutor agent: medians of {ROUNDS} rounds ({REAL_ROUNDS} with the flask environment),"
        f" {os.cpu_count()} cores"
    )
    print(f"| {'figure':<78} | {'value':>7} | target |")
    print(f"| {'-' * 78} | {'-' * 7} | ------ |")
    for figure, value, target in rows:
        print(f"| {figure:<78} | {value:>7} | {target} |")
    return rows


if __name__ == "__main__":
    main()
