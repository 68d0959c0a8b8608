"""Agent overhead: a create through the agent vs py-rattler's own solve + install.

Both sides install the same 100 packages from the same local channel into a new prefix
with a cold package cache, in the same run, so the ratio compares like with like.
Run with ``make bench``; prints a table and returns it for ``docs/benchmarks.md``.

The warm-cache rows create the same environment again with every package already in
the agent's cache. 100 tiny packages cost little to extract, so their cold create is
mostly per-package work that a warm one repeats (linking, one fsync'ed
``conda-meta/*.json`` each): a second set adds acme-big (one ~80 MB file) to the same
100 packages, where the cold create is dominated by extracting a real-sized package.
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

from darb.executor.v1 import executor_pb2 as pb
from tests.support.agent import AgentProcess, start_agent
from tests.support.channel import (
    ACME_BIG,
    build_package,
    cached_package,
    chain_packages,
    index_channel,
    many_packages_channel,
)
from tests.support.processes import PROJECT_ROOT

ROUNDS = 9
BIG_ROUNDS = 5  # each cold round extracts 80 MB
PACKAGES = 100
SETTLE_SECONDS = 1.5  # the agent refills its spares 0.5 s after an operation
# Where the tests keep acme-big once built (tests/conftest.py): building it takes seconds.
PACKAGE_CACHE = PROJECT_ROOT / ".cache" / "test-packages"


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
    it had extracted (about half of its time here), and each run for the one before."""
    os.sync()


def rattler_seconds(channel: str, specs: list[str], scratch: Path) -> float:
    """One solve + install with a cold cache, as py-rattler does it alone."""
    run = scratch / uuid.uuid4().hex
    write_back()
    arguments = json.dumps([channel, specs, str(run / "prefix"), str(run / "pkgs")])
    done = subprocess.run(
        [sys.executable, "-c", RATTLER_ALONE, arguments], capture_output=True, text=True, check=True
    )
    shutil.rmtree(run)
    return float(done.stdout)


def agent_seconds(agent: AgentProcess, specs: list[str], cold: bool) -> float:
    """One CreateEnvironment through the agent, timed from request to result."""
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
    if not result.success or len(result.packages) != len(specs):
        raise RuntimeError(f"benchmark create failed: {result.error}")
    return elapsed


def mixed_channel(channel_dir: Path) -> tuple[str, list[str]]:
    """The benchmark's 100 small packages and acme-big in one channel, and their specs."""
    packages = chain_packages(PACKAGES)
    for spec in packages:
        build_package(channel_dir / "noarch", spec)
    big = cached_package(PACKAGE_CACHE, ACME_BIG)
    try:
        os.link(big, channel_dir / "noarch" / big.name)
    except OSError:  # another filesystem
        shutil.copy2(big, channel_dir / "noarch" / big.name)
    return index_channel(channel_dir), [spec.name for spec in packages] + [ACME_BIG.name]


def measure(scratch: Path) -> list[tuple[str, str, str]]:
    """Rounds alternate (py-rattler, agent cold, agent warm) so that the machine's ups and
    downs (its disk above all) fall on both sides of each comparison alike."""
    channel, specs = many_packages_channel(scratch / "channel", PACKAGES)
    rattler, cold, warm = [], [], []
    with start_agent(scratch / "agent", channel, token="bench") as agent:
        agent_seconds(agent, specs, cold=True)  # warm up the agent's imports and caches
        for _ in range(ROUNDS):
            time.sleep(SETTLE_SECONDS)
            rattler.append(rattler_seconds(channel, specs, scratch))
            cold.append(agent_seconds(agent, specs, cold=True))
            warm.append(agent_seconds(agent, specs, cold=False))
    big_channel, big_specs = mixed_channel(scratch / "big-channel")
    big_cold, big_warm = [], []
    with start_agent(scratch / "agent-big", big_channel, token="bench") as agent:
        agent_seconds(agent, big_specs, cold=False)  # the agent's first-run costs
        for _ in range(BIG_ROUNDS):
            time.sleep(SETTLE_SECONDS)
            big_cold.append(agent_seconds(agent, big_specs, cold=True))
            big_warm.append(agent_seconds(agent, big_specs, cold=False))
    rattler_ms, cold_ms, warm_ms = (1000 * statistics.median(x) for x in (rattler, cold, warm))
    added_ms = 1000 * statistics.median(c - r for c, r in zip(cold, rattler, strict=True))
    big_cold_ms, big_warm_ms = (1000 * statistics.median(x) for x in (big_cold, big_warm))
    return [
        ("py-rattler solve + install, 100 packages, cold cache (ms)", f"{rattler_ms:.0f}", "-"),
        ("agent create, same packages, cold cache (ms)", f"{cold_ms:.0f}", "-"),
        ("agent added time per create (ms, median of paired rounds)", f"{added_ms:.0f}", "< 150"),
        ("agent / py-rattler (ratio)", f"{cold_ms / rattler_ms:.2f}", "-"),
        ("agent create, same packages, warm cache (ms)", f"{warm_ms:.0f}", "-"),
        ("agent create, warm cache / cold cache (ratio)", f"{warm_ms / cold_ms:.2f}", "<= 0.3"),
        ("agent create, 100 small + one 80 MB package, cold cache (ms)", f"{big_cold_ms:.0f}",
         "-"),
        ("agent create, same 101 packages, warm cache (ms)", f"{big_warm_ms:.0f}", "-"),
        ("agent create with the 80 MB package, warm / cold (ratio)",
         f"{big_warm_ms / big_cold_ms:.2f}", "<= 0.3"),
    ]  # fmt: skip


def main() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="darb-bench-") as scratch:
        rows = measure(Path(scratch))
    print(
        f"\nexecutor agent: medians of {ROUNDS} rounds ({BIG_ROUNDS} with the 80 MB package),"
        f" {os.cpu_count()} cores"
    )
    print(f"| {'figure':<62} | {'value':>7} | target |")
    print(f"| {'-' * 62} | {'-' * 7} | ------ |")
    for figure, value, target in rows:
        print(f"| {figure:<62} | {value:>7} | {target} |")
    return rows


if __name__ == "__main__":
    main()
