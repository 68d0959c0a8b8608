"""The package-cache sweep of a real agent over 10,000 cached packages (issue 17: at most
2 s).

Each package is what rattler leaves in ``$DARB_DATA_DIR/pkgs``: an extracted directory
(``info/index.json``, ``info/paths.json`` and three payload files in two directories)
beside its ``.lock`` file. A third are linked (one payload file hard-linked into an
environment directory), and of the others half are older than DARB_PKG_CACHE_MAX_AGE
(1 day) and half younger: the sweep checks all 10,000, removes the ~3,300 old unlinked
ones and stamps the linked ones. Timed: one SweepPackageCache call to the agent, from the
request to the answer, once the agent has settled after its start (its first measure of
the cache, its spare worker), over fresh caches in each round (median).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from darb.executor.v1 import disk_pb2, disk_pb2_grpc, executor_pb2
from testkit.agent import AgentProcess, start_agent

PACKAGES = 10_000
ROUNDS = 3
OLD = 40 * 86400
MAX_AGE = "1d"
SETTLE_SECONDS = 1.5


def fill(data_dir: Path) -> tuple[int, int]:
    """Writes the cache; returns (packages that should go, packages linked)."""
    cache = data_dir / "pkgs"
    environment = data_dir / "environments" / str(uuid.uuid4()) / ".pixi" / "envs" / "default"
    environment.mkdir(parents=True, exist_ok=True)
    now = time.time()
    doomed = linked = 0
    for number in range(PACKAGES):
        key = f"bench-package-{number}-1.0-h0_0"
        package = cache / key
        (package / "info").mkdir(parents=True)
        (package / "lib").mkdir()
        (package / "share" / "doc").mkdir(parents=True)
        (package / "info" / "index.json").write_text(json.dumps({"name": key}))
        (package / "info" / "paths.json").write_text('{"paths": []}')
        (package / "lib" / "library.so").write_bytes(b"\0" * 512)
        (package / "share" / "doc" / "README").write_text("readme\n")
        (package / "share" / "doc" / "LICENSE").write_text("license\n")
        lock = cache / f"{key}.lock"
        lock.write_bytes(b"\0" * 40)
        if number % 3 == 0:
            os.link(package / "lib" / "library.so", environment / f"library-{number}.so")
            linked += 1
            stamp = now - OLD
        elif number % 3 == 1:
            doomed += 1
            stamp = now - OLD
        else:
            stamp = now
        for path in (package, lock):
            os.utime(path, (stamp, stamp))
    return doomed, linked


def settle(agent: AgentProcess) -> None:
    """Until the agent has measured its cache once (it does at start) and started its
    spare worker: a scheduled sweep does not run in the agent's first seconds."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = agent.stub().GetInfo(executor_pb2.GetInfoRequest(), metadata=agent.metadata)
        if info.package_cache_bytes >= 0:
            break
        time.sleep(0.2)
    time.sleep(SETTLE_SECONDS)


def sweep_seconds(scratch: Path) -> float:
    data_dir = scratch / f"agent-{uuid.uuid4().hex[:8]}" / "data"
    doomed, linked = fill(data_dir)
    os.sync()
    env = {"DARB_PKG_CACHE_MAX_AGE": MAX_AGE, "DARB_PKG_CACHE_SWEEP_INTERVAL": "0"}
    agent = start_agent(data_dir, "file:///nonexistent", token="bench", extra_env=env)
    with agent, grpc.insecure_channel(agent.addr) as channel:
        settle(agent)
        stub = disk_pb2_grpc.DiskServiceStub(channel)
        started = time.perf_counter()
        result = stub.SweepPackageCache(
            disk_pb2.SweepPackageCacheRequest(), metadata=agent.metadata, timeout=120
        )
        elapsed = time.perf_counter() - started
    if (result.packages_removed, result.packages_in_use) != (doomed, linked):
        raise RuntimeError(f"the sweep did not do what was expected: {result}")
    return elapsed


def main() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="darb-bench-sweep-") as scratch:
        seconds = [sweep_seconds(Path(scratch)) for _ in range(ROUNDS)]
    median = statistics.median(seconds)
    rows = [
        (
            f"package-cache sweep over {PACKAGES:,} cached packages, a third removed (s)",
            f"{median:.2f}",
            "<= 2",
        )
    ]
    print(f"\npackage-cache sweep: median of {ROUNDS} rounds: {median:.2f} s ({seconds})")
    return rows


if __name__ == "__main__":
    main()
