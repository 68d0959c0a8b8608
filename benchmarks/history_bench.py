"""Environment history figures: a rollback through the control plane against py-rattler
installing the same lock itself, a rebuild on an empty agent (cold cache) against the
same, and DiffEnvironmentVersions of a 300-package environment.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

from benchmarks import executor_bench, real_environment
from benchmarks.stack import AioClient, Stack
from benchmarks.stats import Row, ms, percentile
from darb.v1 import common_pb2, environments_pb2, jobs_pb2

DIFF_PACKAGES = 300
DIFF_CALLS = 500
# py-rattler alone: the lock's records for the host installed into a new prefix, with the
# agent's (warm) package cache, as the agent's worker does for a rollback.
RATTLER_LOCK_INSTALL = """
import asyncio, json, os, sys, time
from rattler import LockFile, install

lock_path, prefix, cache = json.loads(sys.argv[1])
started = time.perf_counter()
environment = LockFile.from_path(lock_path).default_environment()
platform = environment.platforms()[0]
records = environment.conda_repodata_records_for_platform(platform)
asyncio.run(install(records, target_prefix=prefix, cache_dir=cache, show_progress=False))
print(time.perf_counter() - started, flush=True)
os._exit(0)
"""


async def _call(client: AioClient, method: str, request: object) -> object:
    return await getattr(client.envs, method)(request, metadata=client.metadata, timeout=60)


async def _wait(client: AioClient, job_id: str) -> None:
    request = jobs_pb2.WatchJobRequest(id=job_id)
    last = None
    async for event in client.jobs.WatchJob(request, metadata=client.metadata, timeout=300):
        if event.HasField("job"):
            last = event.job
    if last is None or last.status != common_pb2.JOB_STATUS_COMPLETED:
        raise RuntimeError(f"benchmark job {job_id} did not complete: {last}")


async def _job(client: AioClient, method: str, request: object) -> float:
    started = time.perf_counter()
    response = await _call(client, method, request)
    await _wait(client, response.job.id)  # type: ignore[attr-defined]
    return time.perf_counter() - started


def _rattler_alone(stack: Stack, lockfile: str) -> float:
    run = stack.scratch / "rollback-alone" / uuid.uuid4().hex
    run.mkdir(parents=True)
    (run / "pixi.lock").write_text(lockfile)
    executor_bench.write_back()
    cache = stack.agents[0].data_dir / "pkgs"
    arguments = json.dumps([str(run / "pixi.lock"), str(run / "prefix"), str(cache)])
    command = [sys.executable, "-c", RATTLER_LOCK_INSTALL, arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout)


async def rollback(stack: Stack, token: str, rounds: int = 3) -> list[Row]:
    """The flask environment created (version 1, which also warms the cache) and emptied
    by removing flask; each round rolls it back to version 1 (the 30 packages linked
    from the warm cache) and empties it again, and py-rattler installs version 1's lock
    into a new prefix from the same cache."""
    client = AioClient(stack.api.addr, token)
    create = environments_pb2.CreateEnvironmentRequest(
        name="rollback-bench", packages=[real_environment.ROOT_SPEC]
    )
    created = await _call(client, "CreateEnvironment", create)
    environment_id = created.environment.id  # type: ignore[attr-defined]
    await _wait(client, created.job.id)  # type: ignore[attr-defined]
    first = await _call(
        client,
        "GetEnvironmentVersion",
        environments_pb2.GetEnvironmentVersionRequest(environment_id=environment_id, version=1),
    )
    lockfile = first.version.lockfile  # type: ignore[attr-defined]
    remove = environments_pb2.RemovePackagesRequest(
        environment_id=environment_id, packages=[real_environment.ROOT_SPEC]
    )
    back = environments_pb2.RollbackEnvironmentRequest(environment_id=environment_id, version=1)
    through, alone = [], []
    for _ in range(rounds):
        await _job(client, "RemovePackages", remove)
        await asyncio.sleep(executor_bench.SETTLE_SECONDS)
        await asyncio.to_thread(executor_bench.write_back)
        through.append(await _job(client, "RollbackEnvironment", back))
        alone.append(await asyncio.to_thread(_rattler_alone, stack, lockfile))
    await client.close()
    through_s, alone_s = percentile(through, 50), percentile(alone, 50)
    ratio = through_s / alone_s
    return [
        Row(f"rollback of {real_environment.DESCRIPTION}, warm cache, through the control"
            " plane / py-rattler installing the same lock (ms)",
            f"{ms(through_s)} / {ms(alone_s)}"),
        Row("  rollback / py-rattler's lock install (ratio)", f"{ratio:.2f}", "≤ 1.5",
            ratio <= 1.5),
    ]  # fmt: skip


def insert_versions(stack: Stack, owner_id: str, channel: str) -> str:
    """An environment with two versions of ``DIFF_PACKAGES`` packages each (the second
    with every tenth package upgraded, one removed and one added), written straight into
    the database: installing 300 packages twice is not what this figure measures."""
    environment_id, now = str(uuid.uuid4()), datetime.now(UTC)
    names = [f"pkg-{i:03d}" for i in range(DIFF_PACKAGES)]
    old = [[name, "1.0", "h0_0", channel] for name in names]
    new = [[n, "1.1" if i % 10 == 0 else "1.0", "h0_0", channel] for i, n in enumerate(names)]
    new = [*new[1:], ["pkg-new", "1.0", "h0_0", channel]]
    with stack.sql() as conn:
        conn.execute(
            "INSERT INTO environments (id, owner_id, name, package_manager, channels,"
            " executor, status, error, manifest, lockfile, created_at, updated_at,"
            " current_version, platforms) VALUES (%s, %s, 'diff-bench', 'pixi', %s, 'none',"
            " 'READY', '', '', '', %s, %s, 2, '[\"linux-64\"]')",
            (environment_id, owner_id, json.dumps([channel]), now, now),
        )
        conn.execute(  # its owner's membership, as a create gives it (role 3: OWNER)
            "INSERT INTO environment_members (environment_id, member_key, user_id, role)"
            " VALUES (%s, 'user:' || %s, %s, 3)",
            (environment_id, owner_id, owner_id),
        )
        for version, packages in ((1, old), (2, new)):
            specs = {p[0]: f"{p[0]} >={p[1]}" for p in packages}
            deps = "\n".join(f'{p[0]} = ">={p[1]}"' for p in packages)
            manifest = (
                f'[workspace]\nname = "diff-bench"\nchannels = []\n\n[dependencies]\n{deps}\n'
            )
            conn.execute(
                "INSERT INTO environment_versions (environment_id, version, job_id, created_by,"
                " created_at, description, content_hash, platforms, packages, specs, manifest,"
                " lockfile) VALUES (%s, %s, '', %s, %s, '', '', '[\"linux-64\"]', %s, %s, %s,"
                " '')",
                (
                    *(environment_id, version, owner_id, now),
                    *(json.dumps(packages), json.dumps(specs), manifest),
                ),
            )
    return environment_id


async def diff(stack: Stack, owner_id: str, token: str, channel: str) -> list[Row]:
    environment_id = insert_versions(stack, owner_id, channel)
    client = AioClient(stack.api.addr, token)
    request = environments_pb2.DiffEnvironmentVersionsRequest(
        environment_id=environment_id, from_version=1, to_version=2
    )
    samples = []
    for _ in range(DIFF_CALLS):
        started = time.perf_counter()
        response = await _call(client, "DiffEnvironmentVersions", request)
        samples.append(time.perf_counter() - started)
    await client.close()
    changed = len(response.changed)  # type: ignore[attr-defined]
    if changed != DIFF_PACKAGES // 10 - 1:
        raise RuntimeError(f"the diff found {changed} changed packages")
    p99 = percentile(samples, 99)
    return [
        Row(f"DiffEnvironmentVersions, two versions of {DIFF_PACKAGES} packages, one client"
            f" ({DIFF_CALLS} calls): p50 / p99 (ms)",
            f"{ms(percentile(samples, 50))} / {ms(p99)}", "p99 ≤ 20", p99 <= 0.020),
    ]  # fmt: skip


def _empty_agent_of(stack: Stack, environment_id: str) -> None:
    """The agent loses the environment's directory and its whole package cache, as an
    agent restarted on an empty disk has neither (only while it is idle).

    They are moved out of its data directory, not deleted: a lost disk leaves no files
    to delete, and deleting these (about 10,500 files) just before made the next install
    here twice as slow (ext4 mounted with ``discard``); py-rattler's own runs are not
    deleted either. The scratch directory goes with the stack."""
    agent = stack.agents[0]
    lost = stack.scratch / "lost" / uuid.uuid4().hex
    lost.mkdir(parents=True)
    (agent.data_dir / "environments" / environment_id).rename(lost / "environment")
    (agent.data_dir / "pkgs").rename(lost / "pkgs")
    (agent.data_dir / "pkgs").mkdir()


def _rattler_cold(stack: Stack, lockfile: str) -> float:
    """py-rattler installing the lock into a new prefix with a new, empty cache."""
    run = stack.scratch / "rebuild-alone" / uuid.uuid4().hex
    run.mkdir(parents=True)
    (run / "pixi.lock").write_text(lockfile)
    executor_bench.write_back()
    arguments = json.dumps([str(run / "pixi.lock"), str(run / "prefix"), str(run / "pkgs")])
    command = [sys.executable, "-c", RATTLER_LOCK_INSTALL, arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout)


async def rebuild(stack: Stack, rounds: int = 3) -> list[Row]:
    """The flask environment created; each round its agent loses the environment's
    directory and its package cache (an empty agent, cold cache), an admin's
    RebuildEnvironment installs version 1's lock again (from the RPC to the watcher
    hearing COMPLETED), and py-rattler alone installs the same lock into a new prefix
    with a new, empty cache; which of the two goes first alternates, and each starts
    with every dirty page written back (``executor_bench.write_back``)."""
    admin = stack.api.admin()
    client = AioClient(stack.api.addr, admin.token)
    admin.channel.close()
    create = environments_pb2.CreateEnvironmentRequest(
        name="rebuild-bench", packages=[real_environment.ROOT_SPEC]
    )
    created = await _call(client, "CreateEnvironment", create)
    environment_id = created.environment.id  # type: ignore[attr-defined]
    await _wait(client, created.job.id)  # type: ignore[attr-defined]
    current = await _call(
        client,
        "GetEnvironmentVersion",
        environments_pb2.GetEnvironmentVersionRequest(environment_id=environment_id),
    )
    lockfile = current.version.lockfile  # type: ignore[attr-defined]
    again = environments_pb2.RebuildEnvironmentRequest(environment_id=environment_id)

    async def rebuilt() -> float:
        # Like _rattler_cold: neither run pays for the files the other left to write back.
        await asyncio.to_thread(executor_bench.write_back)
        return await _job(client, "RebuildEnvironment", again)

    through: list[float] = []
    alone: list[float] = []
    for round_number in range(rounds):
        await asyncio.sleep(executor_bench.SETTLE_SECONDS)
        await asyncio.to_thread(_empty_agent_of, stack, environment_id)
        if round_number % 2:  # every other round py-rattler goes first: no order favoured
            alone.append(await asyncio.to_thread(_rattler_cold, stack, lockfile))
            through.append(await rebuilt())
        else:
            through.append(await rebuilt())
            alone.append(await asyncio.to_thread(_rattler_cold, stack, lockfile))
    await client.close()
    through_s, alone_s = percentile(through, 50), percentile(alone, 50)
    ratio = through_s / alone_s
    return [
        Row(f"rebuild of {real_environment.DESCRIPTION} on an empty agent (cold cache),"
            " through the control plane / py-rattler installing the same lock (ms)",
            f"{ms(through_s)} / {ms(alone_s)}"),
        Row("  rebuild / py-rattler's own install of the lock, cold cache (ratio)",
            f"{ratio:.2f}", "≤ 1.3", ratio <= 1.3),
    ]  # fmt: skip
