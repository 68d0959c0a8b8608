"""Disk on the control plane (issue 17, points 4-5), against real agents and a real
database: AdminService.GetUsage and SweepPackageCache, log retention, a create refused
for want of disk, and the disk metrics."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest

from darb.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from testkit.postgres import libpq_url
from tests.api.faults import ready_environment
from tests.api.test_metrics import eventually, metrics_url, value

AgentFactory = Callable[..., AgentProcess]
ApiFactory = Callable[..., ApiProcess]


def admin_stub(client: Client) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(client.channel)


def du(*paths: Path) -> list[int]:
    out = subprocess.run(
        ["du", "-s", "-B1", *map(str, paths)], check=True, capture_output=True, text=True
    ).stdout
    return [int(line.split("\t")[0]) for line in out.splitlines()]


def name() -> str:
    return f"d{uuid.uuid4().hex[:8]}"


def test_get_usage_sums_by_agent_and_owner(
    agent_factory: AgentFactory, api_factory: ApiFactory, own_database: str
) -> None:
    agent = agent_factory(DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    api = api_factory(own_database, executors=agent.addr)
    admin = api.admin()
    alice, bob = api.new_user(), api.new_user()
    owned = {
        alice.user.id: [
            ready_environment(alice, name(), ["acme-utils"]),
            ready_environment(alice, name(), ["acme-tool"]),
        ],
        bob.user.id: [ready_environment(bob, name(), ["acme-core ==2.0"])],
    }
    usage = admin.call(admin_stub(admin).GetUsage, admin_pb2.GetUsageRequest(), timeout=120)
    environments = sorted(e for ids in owned.values() for e in ids)
    root = agent.data_dir
    cache, *sizes = du(root / "pkgs", *(root / "environments" / e for e in environments))
    size = dict(zip(environments, sizes, strict=True))
    [measured] = usage.agents
    assert measured.agent == agent.addr and measured.reachable
    assert measured.package_cache_bytes == cache
    assert measured.environments_bytes == sum(sizes)
    assert measured.environments == 3
    assert measured.package_cache_packages == 4  # acme-utils, acme-tool, acme-core 1.1, 2.0
    assert 0 < measured.free_bytes <= measured.total_bytes
    by_user = {u.user_id: u for u in usage.users}
    assert set(by_user) == set(owned)
    for user_id, ids in owned.items():
        assert by_user[user_id].environments == len(ids)
        assert by_user[user_id].bytes == sum(size[e] for e in ids)
        assert by_user[user_id].unmeasured_environments == 0
    assert by_user[alice.user.id].username == alice.user.username
    # What an environment adds beyond the cache: its own files (manifest, lock, records),
    # not the package files it hard-links (acme-tool's one file is a patched copy).
    for linked in (owned[alice.user.id][0], owned[bob.user.id][0]):
        assert 0 < size[linked] < du(root / "environments" / linked)[0]
    with pytest.raises(grpc.RpcError) as denied:
        alice.call(admin_stub(alice).GetUsage, admin_pb2.GetUsageRequest())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_usage_reports_an_agent_that_does_not_answer(
    agent_factory: AgentFactory, api_factory: ApiFactory, own_database: str
) -> None:
    agent = agent_factory(DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    api = api_factory(own_database, executors=agent.addr)
    user = api.new_user()
    ready_environment(user, name(), ["acme-core"])
    agent.stop()
    admin = api.admin()
    usage = admin.call(admin_stub(admin).GetUsage, admin_pb2.GetUsageRequest(), timeout=120)
    [measured] = usage.agents
    assert not measured.reachable and "UNAVAILABLE" in measured.error
    [owner] = usage.users
    assert (owner.environments, owner.bytes, owner.unmeasured_environments) == (1, 0, 1)


def test_sweep_package_cache_rpc(
    agent_factory: AgentFactory, api_factory: ApiFactory, own_database: str
) -> None:
    agent = agent_factory(DARB_PKG_CACHE_MAX_AGE="0", DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    api = api_factory(own_database, executors=agent.addr)
    user = api.new_user()
    kept = ready_environment(user, name(), ["acme-core ==1.1"])
    gone = ready_environment(user, name(), ["acme-core ==2.0"])
    assert user.wait(user.call(user.envs.DeleteEnvironment, _delete(gone)).job.id).status == (
        common_pb2.JOB_STATUS_COMPLETED
    )
    old = agent.data_dir / "pkgs" / "acme-core-2.0-h0_0"
    freed = sum(du(old, old.with_name(old.name + ".lock")))
    admin = api.admin()
    stub = admin_stub(admin)
    for request in (
        admin_pb2.SweepPackageCacheRequest(agent=agent.addr),
        admin_pb2.SweepPackageCacheRequest(),
    ):
        response = admin.call(stub.SweepPackageCache, request, timeout=120)
        [swept] = response.agents
        assert swept.agent == agent.addr and swept.reachable, swept.error
        if request.agent:
            assert (swept.packages_removed, swept.bytes_freed, swept.packages_in_use) == (
                1,
                freed,
                1,
            )
        else:  # nothing left to remove
            assert (swept.packages_removed, swept.packages_in_use) == (0, 1)
    assert not old.exists()
    assert user.packages(kept) == {"acme-core": "1.1"}
    with pytest.raises(grpc.RpcError) as unknown:
        admin.call(stub.SweepPackageCache, admin_pb2.SweepPackageCacheRequest(agent="10.0.0.1:1"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as denied:
        user.call(admin_stub(user).SweepPackageCache, admin_pb2.SweepPackageCacheRequest())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _delete(environment_id: str):  # type: ignore[no-untyped-def]
    from darb.v1 import environments_pb2

    return environments_pb2.DeleteEnvironmentRequest(id=environment_id)


def test_log_retention_drops_old_logs_only(
    shared_agent: AgentProcess, api_factory: ApiFactory, own_database: str
) -> None:
    api = api_factory(own_database, DARB_LOG_RETENTION_DAYS="2", DARB_LOG_RETENTION_INTERVAL="1")
    user = api.new_user()
    old_env = ready_environment(user, name(), ["acme-core"])
    old_job = user.install(old_env, ["acme-utils"])
    assert user.wait(old_job.id).status == common_pb2.JOB_STATUS_COMPLETED
    recent = user.install(old_env, ["acme-extras"])
    assert user.wait(recent.id).status == common_pb2.JOB_STATUS_COMPLETED
    kept_log = user.get_job(recent.id).logs
    assert len(kept_log.splitlines()) > 2
    with psycopg.connect(libpq_url(own_database), autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET completed_at = %s WHERE id = %s",
            (datetime.now(UTC) - timedelta(days=3), old_job.id),
        )
        # A day ago: younger than the retention, kept.
        conn.execute(
            "UPDATE jobs SET completed_at = %s WHERE id = %s",
            (datetime.now(UTC) - timedelta(days=1), recent.id),
        )
    deadline = time.monotonic() + 60
    while True:
        job = user.get_job(old_job.id)
        if "dropped" in job.logs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job.logs == "darb: this job's log was dropped after 2 days (DARB_LOG_RETENTION_DAYS)"
    assert job.status == common_pb2.JOB_STATUS_COMPLETED
    watched = [line.text for event in user.watch(old_job.id) for line in event.log_lines.lines]
    assert watched == ["darb: this job's log was dropped after 2 days (DARB_LOG_RETENTION_DAYS)"]
    time.sleep(2)  # another round of retention leaves both as they are
    assert user.get_job(recent.id).logs == kept_log
    assert user.get_job(old_job.id).logs == job.logs
    with psycopg.connect(libpq_url(own_database)) as conn:
        rows = conn.execute("SELECT count(*) FROM job_log_lines WHERE job_id = %s", (old_job.id,))
        assert rows.fetchone() == (1,)
        versions = conn.execute(
            "SELECT count(*) FROM environment_versions WHERE environment_id = %s", (old_env,)
        )
        assert versions.fetchone() == (3,)
    assert user.packages(old_env)["acme-utils"] == "1.0"


def test_create_refused_when_the_agent_disk_is_low(
    agent_factory: AgentFactory, api_factory: ApiFactory, own_database: str
) -> None:
    statvfs = os.statvfs("/tmp")
    above = statvfs.f_bavail * statvfs.f_frsize + 1024**4
    agent = agent_factory(DARB_MIN_FREE_BYTES=str(above), DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    api = api_factory(own_database, executors=agent.addr)
    user = api.new_user()
    created = user.create(name(), ["acme-core"])
    job = user.wait(created.job.id)
    assert job.status == common_pb2.JOB_STATUS_FAILED
    assert "DARB_MIN_FREE_BYTES" in job.error and "bytes free" in job.error, job.error
    assert user.get_env(created.environment.id).status == common_pb2.ENVIRONMENT_STATUS_FAILED
    assert not any((agent.data_dir / "environments").iterdir())


def test_disk_metrics(
    agent_factory: AgentFactory, api_factory: ApiFactory, own_database: str
) -> None:
    agent = agent_factory(DARB_PKG_CACHE_SWEEP_INTERVAL="0")
    api = api_factory(own_database, executors=agent.addr, DARB_METRICS_ADDR="127.0.0.1:0")
    user = api.new_user()
    for _ in range(2):
        ready_environment(user, name(), ["acme-core"])
    url = metrics_url(api)
    cache = du(agent.data_dir / "pkgs")[0]

    def ready(samples: dict) -> bool:  # type: ignore[type-arg]
        return (
            value(samples, "darb_environments", agent=agent.addr, status="ready") == 2
            and value(samples, "darb_agent_package_cache_bytes", agent=agent.addr) == cache
        )

    samples = eventually(url, ready)
    assert value(samples, "darb_environments", agent=agent.addr, status="ready") == 2
    assert value(samples, "darb_agent_package_cache_bytes", agent=agent.addr) == cache
    free = value(samples, "darb_agent_free_bytes", agent=agent.addr)
    statvfs = os.statvfs(agent.data_dir)
    assert free is not None and abs(free - statvfs.f_bavail * statvfs.f_frsize) < 1024**3


def test_log_retention_in_batches(
    shared_agent: AgentProcess, api_factory: ApiFactory, own_database: str
) -> None:
    """More old jobs than one transaction takes (100): every one loses its lines, in
    several batches, and a job that ended recently keeps them."""
    api = api_factory(own_database, DARB_LOG_RETENTION_DAYS="1", DARB_LOG_RETENTION_INTERVAL="1")
    user = api.new_user()
    environment_id = ready_environment(user, name(), ["acme-core"])
    old = datetime.now(UTC) - timedelta(days=2)
    with psycopg.connect(libpq_url(own_database), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, environment_id, owner_id, created_by, type, status, payload,"
            " error, cancel_requested, created_at, started_at, completed_at)"
            " SELECT gen_random_uuid()::text, %(env)s, %(user)s, %(user)s, 'INSTALL_PACKAGES',"
            " 'COMPLETED', '{}', '', false, %(old)s, %(old)s, %(old)s"
            " FROM generate_series(1, 250)",
            {"env": environment_id, "user": user.user.id, "old": old},
        )
        conn.execute(
            "INSERT INTO job_log_lines (job_id, seq, stream, time, text)"
            " SELECT j.id, n, 'stdout', %(old)s, 'line ' || n FROM jobs j,"
            " generate_series(1, 3) AS n"
            " WHERE j.environment_id = %(env)s AND j.payload::text = '{}'",
            {"env": environment_id, "old": old},
        )
        deadline = time.monotonic() + 60
        while True:
            left = conn.execute(
                "SELECT count(*) FROM job_log_lines WHERE text LIKE 'line %%'"
            ).fetchone()
            if left == (0,) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left == (0,)
        markers = conn.execute(
            "SELECT count(*) FROM job_log_lines"
            " WHERE seq = 1 AND text LIKE '%%dropped after 1 days%%'"
        ).fetchone()
        assert markers == (250,)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (251,)
    # the round logs after one more batch finds nothing left, so the log may trail the rows
    deadline = time.monotonic() + 30
    while "log retention: dropped the logs of 250 jobs" not in api.log_text():
        assert time.monotonic() < deadline, api.log_text()[-2000:]
        time.sleep(0.1)
    with psycopg.connect(libpq_url(own_database)) as conn:
        create = conn.execute(
            "SELECT id FROM jobs WHERE environment_id = %s AND type = 'CREATE_ENVIRONMENT'",
            (environment_id,),
        ).fetchone()
    assert create is not None
    logs = user.get_job(create[0]).logs
    assert len(logs.splitlines()) > 1 and "dropped" not in logs
