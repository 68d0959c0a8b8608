"""A job's end: ``darb_finish_job`` on PostgreSQL and ``outcomes.finish`` on SQLite must
leave the same rows and report the same ended jobs, for every kind of end.

Each case seeds an environment with jobs in one database of each kind, ends one job
through ``outcomes.end_job`` (the dispatcher's and CancelJob's path) and compares what
the two left, with ids replaced by the seed's labels. Each case also states what must
hold, so that two equally wrong implementations do not pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.db import Database, sqlite_engine
from services.api.events import EventBus
from services.api.models import (
    Environment,
    EnvironmentStatus,
    InstalledPackage,
    Job,
    JobStatus,
    utcnow,
)
from services.api.outcomes import AgentState, Outcome, end_job
from services.api.repo import environments, jobs, users
from services.api.repo.environments import PackageRow
from tests.support.postgres import fresh_database, libpq_url
from tests.support.schema import migrate_url

WORKER = "cp-1"
AGENT = "agent-1:50051"
OLD = [PackageRow("old", "1", "0", "c")]
NEW = [PackageRow("a", "1.0", "h1", "file:///c"), PackageRow("b", "2.0", "h2", "file:///c")]
STATE = AgentState(NEW, "manifest v2", "lock v2")
CREATE = payloads.CreatePayload("env", ["c"], ["a"])
INSTALL = payloads.InstallPayload(["b"])
DELETE = payloads.DeletePayload()


@dataclass(frozen=True)
class Case:
    """Jobs in submission order as (label, payload, status); ``ends`` is ended."""

    jobs: list[tuple[str, payloads.Payload, JobStatus]]
    ends: str
    outcome: Outcome
    expected: JobStatus = JobStatus.RUNNING
    worker: str | None = WORKER
    environment_status: EnvironmentStatus = EnvironmentStatus.CREATING
    # What must hold, on both databases: the ended labels and the environment's fields.
    ended: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)


CASES = {
    "create completes": Case(
        [("create", CREATE, JobStatus.RUNNING), ("install", INSTALL, JobStatus.PENDING)],
        "create",
        Outcome(JobStatus.COMPLETED, "", STATE),
        ended=["create"],
        environment={"status": "READY", "manifest": "manifest v2", "packages": ["a", "b"]},
    ),
    "create fails: queued jobs fail, the delete stays": Case(
        [
            ("create", CREATE, JobStatus.RUNNING),
            ("install", INSTALL, JobStatus.PENDING),
            ("install2", INSTALL, JobStatus.PENDING),
            ("delete", DELETE, JobStatus.PENDING),
        ],
        "create",
        Outcome(JobStatus.FAILED, "cannot solve"),
        environment_status=EnvironmentStatus.DELETING,
        ended=["create", "install", "install2"],
        environment={"status": "DELETING", "error": "cannot solve", "packages": ["old"]},
    ),
    "create fails without a message": Case(
        [("create", CREATE, JobStatus.RUNNING)],
        "create",
        Outcome(JobStatus.FAILED, "", AgentState()),
        ended=["create"],
        environment={"status": "FAILED", "error": "creation did not complete", "packages": []},
    ),
    "install completes": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("install", INSTALL, JobStatus.RUNNING)],
        "install",
        Outcome(JobStatus.COMPLETED, "", STATE),
        environment_status=EnvironmentStatus.READY,
        ended=["install"],
        environment={"status": "READY", "lockfile": "lock v2", "packages": ["a", "b"]},
    ),
    "install fails, state not reported": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("install", INSTALL, JobStatus.RUNNING)],
        "install",
        Outcome(JobStatus.FAILED, "agent lost"),
        environment_status=EnvironmentStatus.READY,
        ended=["install"],
        environment={"status": "READY", "manifest": "manifest v1", "packages": ["old"]},
    ),
    "delete completes": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("delete", DELETE, JobStatus.RUNNING)],
        "delete",
        Outcome(JobStatus.COMPLETED, "", STATE),
        environment_status=EnvironmentStatus.DELETING,
        ended=["delete"],
        environment={"deleted": True, "manifest": "manifest v1", "packages": []},
    ),
    "delete fails: the status before it returns": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("delete", DELETE, JobStatus.RUNNING)],
        "delete",
        Outcome(JobStatus.FAILED, "busy"),
        environment_status=EnvironmentStatus.DELETING,
        ended=["delete"],
        environment={"status": "READY", "deleted": False, "packages": ["old"]},
    ),
    "another worker's job is left alone": Case(
        [("create", CREATE, JobStatus.RUNNING)],
        "create",
        Outcome(JobStatus.COMPLETED, "", STATE),
        worker="cp-2",
        environment={"status": "CREATING", "packages": ["old"]},
    ),
    "a job no longer expected is left alone": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("install", INSTALL, JobStatus.RUNNING)],
        "install",
        Outcome(JobStatus.CANCELLED, "cancelled"),
        expected=JobStatus.PENDING,
        worker=None,
        environment_status=EnvironmentStatus.READY,
        environment={"status": "READY", "packages": ["old"]},
    ),
    "a pending install is cancelled": Case(
        [("create", CREATE, JobStatus.COMPLETED), ("install", INSTALL, JobStatus.PENDING)],
        "install",
        Outcome(JobStatus.CANCELLED, "cancelled by request"),
        expected=JobStatus.PENDING,
        worker=None,
        environment_status=EnvironmentStatus.READY,
        ended=["install"],
        environment={"status": "READY", "packages": ["old"]},
    ),
    "an expired lease ends the job whoever ran it": Case(
        [("create", CREATE, JobStatus.RUNNING)],
        "create",
        Outcome(JobStatus.FAILED, "lease expired"),
        worker=None,
        ended=["create"],
        environment={"status": "FAILED", "error": "lease expired"},
    ),
}


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database of each kind, shared by the cases (each its own owner)."""
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('job-end') / 'darb.db'}"
    with fresh_database() as postgres_url:
        urls = {"postgresql": postgres_url, "sqlite": sqlite_url}
        for url in urls.values():
            migrate_url(url)
        yield urls


def _engine(url: str) -> Any:
    return sqlite_engine(url) if url.startswith("sqlite") else create_engine(url)


def _seed(session: Session, case: Case, owner_name: str) -> dict[str, str]:
    """The case's environment and jobs; the labels' ids."""
    owner = users.create(session, owner_name, "x", admin=False)
    environment = environments.create(session, owner, "env", "pixi", ["c"], AGENT)
    session.execute(
        update(Environment)
        .where(Environment.id == environment.id)
        .values(status=case.environment_status, manifest="manifest v1", lockfile="lock v1")
    )
    environments.replace_packages(session, environment.id, OLD)
    ids = {"env": environment.id}
    started = utcnow() - timedelta(seconds=3)
    for label, payload, status in case.jobs:
        job = jobs.submit(session, environment, payload)
        values: dict[str, Any] = {"status": status}
        if status != JobStatus.PENDING:
            values |= {"started_at": started, "claimed_by": WORKER}
        if status == JobStatus.RUNNING:
            values["lease_expires_at"] = utcnow() + timedelta(seconds=30)
        if status.terminal:
            values["completed_at"] = started
        session.execute(update(Job).where(Job.id == job.id).values(**values))
        ids[label] = job.id
    return ids


async def _end(url: str, job_id: str, case: Case) -> list[Any]:
    database = Database(url)
    try:
        bus = EventBus(database)
        return await end_job(database, bus, job_id, case.outcome, case.expected, case.worker)
    finally:
        await database.close()


def _rows(session: Session, ids: dict[str, str]) -> dict[str, Any]:
    """What the end left, ids named by their labels."""
    label = {job_id: name for name, job_id in ids.items()}.get
    environment = session.get_one(Environment, ids["env"])
    packages = session.scalars(
        select(InstalledPackage).where(InstalledPackage.environment_id == ids["env"])
    )
    env_jobs = session.scalars(select(Job).where(Job.environment_id == ids["env"]))
    return {
        "environment": {
            "status": environment.status,
            "error": environment.error,
            "manifest": environment.manifest,
            "lockfile": environment.lockfile,
            "deleted": environment.deleted_at is not None,
            "packages": sorted(
                (p.name, p.version, p.build, p.channel, label(p.environment_id)) for p in packages
            ),
        },
        "jobs": sorted(
            (
                label(job.id),
                job.status,
                job.error,
                job.completed_at is not None,
                job.lease_expires_at is not None,
            )
            for job in env_jobs
        ),
    }


def _run_case(url: str, case: Case, owner_name: str) -> dict[str, Any]:
    engine = _engine(url)
    try:
        with Session(engine) as session, session.begin():
            ids = _seed(session, case, owner_name)
        ended = asyncio.run(_end(url, ids[case.ends], case))
        with Session(engine) as session:
            rows = _rows(session, ids)
    finally:
        engine.dispose()
    label = {job_id: name for name, job_id in ids.items()}.get
    rows["ended"] = [
        (
            label(job.id),
            label(job.environment_id),
            str(job.type),
            str(job.status),
            job.error,
            job.agent,
            job.started_at is not None,
            job.completed_at is not None,
        )
        for job in ended
    ]
    return rows


@pytest.mark.parametrize("name", list(CASES))
def test_both_databases_end_a_job_alike(databases: dict[str, str], name: str) -> None:
    case = CASES[name]
    owner = f"owner-{list(CASES).index(name)}"
    results = {kind: _run_case(url, case, owner) for kind, url in databases.items()}
    assert results["postgresql"] == results["sqlite"]
    result = results["postgresql"]
    assert [ended[0] for ended in result["ended"]] == case.ended
    assert all(ended[5] == AGENT for ended in result["ended"])
    environment = result["environment"]
    for key, value in case.environment.items():
        actual = [p[0] for p in environment["packages"]] if key == "packages" else environment[key]
        assert actual == value, key
    statuses = {job[0]: job[1] for job in result["jobs"]}
    if case.ended:
        assert statuses[case.ends] == case.outcome.status
    else:
        assert statuses[case.ends] == next(s for n, _, s in case.jobs if n == case.ends)


def test_the_function_sends_the_notifies_with_its_commit(databases: dict[str, str]) -> None:
    """Other processes hear of each ended job and of a free slot (``darb_jobs``)."""
    case = CASES["create fails: queued jobs fail, the delete stays"]
    url = databases["postgresql"]
    engine = _engine(url)
    with Session(engine) as session, session.begin():
        ids = _seed(session, case, "owner-notify")
    engine.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as listener:
        listener.execute("LISTEN darb_job_changed")
        listener.execute("LISTEN darb_jobs")
        asyncio.run(_end(url, ids["create"], case))
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=4)]
        heard += [(n.channel, n.payload) for n in listener.notifies(timeout=0.3)]  # no more
    changed = [payload.rpartition(":")[2] for channel, payload in heard if "changed" in channel]
    assert sorted(changed) == sorted([ids["create"], ids["install"], ids["install2"]])
    assert [channel for channel, _ in heard].count("darb_jobs") == 1
    assert len(heard) == 4
