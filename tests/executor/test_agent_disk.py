"""The agent's disk (issue 17, point 4): usage as du counts it, the package-cache sweep
(old unlinked packages go, linked and young ones stay, an install running meanwhile is
unharmed), the scheduled sweep, the free-disk check and GetInfo's disk figures. Real
agents, real packages from the fixture channel, real files."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from darb.executor.v1 import disk_pb2, disk_pb2_grpc
from darb.executor.v1 import executor_pb2 as pb
from testkit.agent import AgentProcess
from tests.executor.helpers import Outcome, call, create, new_id, status_of, workspace_dir

HOUR = 3600


def disk_stub(agent: AgentProcess) -> disk_pb2_grpc.DiskServiceStub:
    return disk_pb2_grpc.DiskServiceStub(grpc.insecure_channel(agent.addr))


def du(*paths: Path) -> list[int]:
    """``du -s -B1`` of each path, in order: a hard-linked file counts for the first path
    it is found under, as the agent counts it."""
    out = subprocess.run(
        ["du", "-s", "-B1", *map(str, paths)], check=True, capture_output=True, text=True
    ).stdout
    return [int(line.split("\t")[0]) for line in out.splitlines()]


def sweep(agent: AgentProcess) -> disk_pb2.SweepPackageCacheResponse:
    return disk_stub(agent).SweepPackageCache(
        disk_pb2.SweepPackageCacheRequest(), metadata=agent.metadata, timeout=120
    )


def entry(agent: AgentProcess, package: str) -> Path:
    return agent.data_dir / "pkgs" / package


def age(agent: AgentProcess, package: str, seconds: float) -> None:
    """Make a cache entry look written ``seconds`` ago (its directory and its .lock)."""
    stamp = time.time() - seconds
    for path in (entry(agent, package), entry(agent, f"{package}.lock")):
        os.utime(path, (stamp, stamp))


def delete(agent: AgentProcess, environment_id: str) -> None:
    outcome = call(agent, "DeleteEnvironment", environment_id=environment_id)
    assert outcome.result.success, outcome.result.error


def test_usage_matches_du(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    first, outcome = create(agent, "acme-utils")
    assert outcome.result.success, outcome.result.error
    second, outcome = create(agent, "acme-core ==2.0")
    assert outcome.result.success, outcome.result.error
    usage = disk_stub(agent).GetUsage(disk_pb2.GetUsageRequest(), metadata=agent.metadata)
    environments = sorted([first, second])
    cache, *sizes = du(agent.data_dir / "pkgs", *(workspace_dir(agent, e) for e in environments))
    assert usage.package_cache_bytes == cache
    assert {e.environment_id: e.bytes for e in usage.environments} == dict(
        zip(environments, sizes, strict=True)
    )
    assert usage.environments_bytes == sum(sizes)
    # The environments hard-link the cache's files: counted once, for the cache.
    alone = du(workspace_dir(agent, first))[0]
    assert alone > dict(zip(environments, sizes, strict=True))[first]
    assert usage.package_cache_packages == 3  # acme-utils, acme-core 1.1 and 2.0
    statvfs = os.statvfs(agent.data_dir)
    assert usage.total_bytes == statvfs.f_blocks * statvfs.f_frsize
    assert abs(usage.free_bytes - statvfs.f_bavail * statvfs.f_frsize) < 256 * 1024**2
    # GetInfo: free disk now, the cache's size as last measured (after the operations).
    deadline = time.monotonic() + 30
    while True:
        info = agent.stub().GetInfo(pb.GetInfoRequest(), metadata=agent.metadata)
        if info.package_cache_bytes == cache or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info.package_cache_bytes == cache
    assert abs(info.free_bytes - statvfs.f_bavail * statvfs.f_frsize) < 256 * 1024**2


def test_usage_does_not_follow_symlinks(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    environment_id, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error
    big = agent.data_dir.parent / "outside"
    big.mkdir()
    (big / "blob").write_bytes(os.urandom(4 * 1024 * 1024))
    (workspace_dir(agent, environment_id) / "link").symlink_to(big)
    usage = disk_stub(agent).GetUsage(disk_pb2.GetUsageRequest(), metadata=agent.metadata)
    workspace = workspace_dir(agent, environment_id)
    assert usage.environments[0].bytes == du(agent.data_dir / "pkgs", workspace)[1]
    assert usage.environments[0].bytes < 4 * 1024 * 1024


def test_sweep_removes_old_unlinked_only(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(DARB_PKG_CACHE_MAX_AGE="1h", DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    kept, outcome = create(agent, "acme-core ==1.1")
    assert outcome.result.success, outcome.result.error
    for version in ("2.0", "1.0"):
        environment_id, outcome = create(agent, f"acme-core =={version}")
        assert outcome.result.success, outcome.result.error
        delete(agent, environment_id)
    age(agent, "acme-core-1.1-h0_0", 2 * HOUR)  # old but linked
    age(agent, "acme-core-2.0-h0_0", 2 * HOUR)  # old and unlinked: goes
    age(agent, "acme-core-1.0-h0_0", 0.5 * HOUR)  # unlinked but young
    gone = du(entry(agent, "acme-core-2.0-h0_0"), entry(agent, "acme-core-2.0-h0_0.lock"))
    result = sweep(agent)
    assert (result.packages_removed, result.packages_in_use, result.packages_too_young) == (1, 1, 1)
    assert result.bytes_freed == sum(gone)
    assert not entry(agent, "acme-core-2.0-h0_0").exists()
    assert not entry(agent, "acme-core-2.0-h0_0.lock").exists()
    assert entry(agent, "acme-core-1.1-h0_0").is_dir()
    assert entry(agent, "acme-core-1.0-h0_0").is_dir()
    # The package in use was stamped as seen now: no longer old.
    assert time.time() - entry(agent, "acme-core-1.1-h0_0").stat().st_mtime < HOUR
    # The environment still works, and a removed package is fetched again when needed.
    again, outcome = create(agent, "acme-core ==2.0")
    assert outcome.result.success, outcome.result.error
    version = ".pixi/envs/default/share/acme-core/VERSION"
    assert (workspace_dir(agent, again) / version).read_text() == "2.0\n"
    assert (workspace_dir(agent, kept) / version).read_text() == "1.1\n"


def test_sweep_waits_for_a_running_install(agent_factory) -> None:  # type: ignore[no-untyped-def]
    """Every unlinked package is old enough to go (max age 0). A sweep asked for while an
    install of the 80 MB acme-big runs must not take the package from under it: the sweep
    runs after it, and then finds acme-big linked."""
    agent = agent_factory(DARB_PKG_CACHE_MAX_AGE="0", DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    environment_id, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error
    results: list[Outcome] = []
    install = threading.Thread(
        target=lambda: results.append(
            call(agent, "InstallPackages", environment_id=environment_id, packages=["acme-big"])
        )
    )
    install.start()
    deadline = time.monotonic() + 60
    while not any(entry(agent, "").glob("acme-big-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert install.is_alive(), "the install ended before the sweep could race it"
    result = sweep(agent)
    install.join(120)
    assert results and results[0].result.success, results[0].result.error if results else "none"
    assert result.packages_removed == 0
    assert result.packages_in_use == 2  # acme-core and acme-big, linked by the environment
    prefix = workspace_dir(agent, environment_id) / ".pixi/envs/default"
    assert "acme-big" in {p.name for p in results[0].result.packages}
    assert entry(agent, "acme-big-1.0-h0_0").is_dir()
    assert any(prefix.rglob("*")) and (prefix / "conda-meta").is_dir()


def test_scheduled_sweep(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(DARB_PKG_CACHE_MAX_AGE="1h", DARB_PKG_CACHE_SWEEP_INTERVAL="1")
    environment_id, outcome = create(agent, "acme-core ==2.0")
    assert outcome.result.success, outcome.result.error
    delete(agent, environment_id)
    age(agent, "acme-core-2.0-h0_0", 2 * HOUR)
    deadline = time.monotonic() + 30
    while entry(agent, "acme-core-2.0-h0_0").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not entry(agent, "acme-core-2.0-h0_0").exists()
    assert "package cache swept" in agent.log_text()


def test_low_disk_refuses_growing_operations(agent_factory) -> None:  # type: ignore[no-untyped-def]
    statvfs = os.statvfs("/tmp")
    above = statvfs.f_bavail * statvfs.f_frsize + 1024**4  # a TiB more than is free
    agent = agent_factory(DARB_MIN_FREE_BYTES=str(above), DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    with pytest.raises(grpc.RpcError) as refused:
        create(agent, "acme-core")
    assert status_of(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DARB_MIN_FREE_BYTES" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        call(agent, "InstallPackages", environment_id=new_id(), packages=["acme-core"])
    assert status_of(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not any((agent.data_dir / "environments").iterdir())


def test_disk_service_needs_the_token(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory()
    with pytest.raises(grpc.RpcError) as refused:
        disk_stub(agent).GetUsage(disk_pb2.GetUsageRequest())
    assert status_of(refused.value) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:
        disk_stub(agent).SweepPackageCache(disk_pb2.SweepPackageCacheRequest())
    assert status_of(refused.value) == grpc.StatusCode.UNAUTHENTICATED
