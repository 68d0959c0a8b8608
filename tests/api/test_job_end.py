"""A job's end: ``darb_finish_job`` must leave the rows each kind of end calls for and
report the jobs it ended.

Each case seeds an environment with jobs, ends one job through ``finishes.end_job`` (the
dispatcher's and CancelJob's path) and checks what it left, with ids replaced by the
seed's labels, against what the case states must hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.database.db import Database
from services.api.events import EventBus
from services.api.records import AgentState, Outcome, PackageRow
from services.api.repo import jobs
from services.api.repo.finishes import end_job
from services.api.repo.models import (
    Environment,
    EnvironmentStatus,
    InstalledPackage,
    Job,
    JobStatus,
    utcnow,
)
from testkit.postgres import fresh_database, libpq_url
from testkit.schema import migrate_url, new_environment, new_user

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
    # What must hold: the ended labels and the environment's fields.
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
def database_url() -> Iterator[str]:
    """One migrated database, shared by the cases (each its own owner)."""
    with fresh_database() as url:
        migrate_url(url)
        yield url


async def _seed(url: str, case: Case, owner_name: str) -> dict[str, str]:
    """The case's environment (made by ``darb_create_environment``, with its create job
    as the first of the case's jobs) and jobs; the labels' ids."""
    database = Database(url)
    try:
        environment, create = await new_environment(
            database, await new_user(database, owner_name), "env", AGENT
        )
        return await database.run(_seed_rows, case, environment, create.id)
    finally:
        await database.close()


def _seed_rows(
    session: Session, case: Case, environment: Environment, create_id: str
) -> dict[str, str]:
    session.execute(
        update(Environment)
        .where(Environment.id == environment.id)
        .values(status=case.environment_status, manifest="manifest v1", lockfile="lock v1")
    )
    session.execute(
        insert(InstalledPackage),
        [{"environment_id": environment.id, **asdict(row)} for row in OLD],
    )
    ids = {"env": environment.id}
    started = utcnow() - timedelta(seconds=3)
    for label, payload, status in case.jobs:
        is_create = isinstance(payload, payloads.CreatePayload)
        job_id = (
            create_id
            if is_create
            else jobs.submit(session, environment, payload, environment.owner_id).id
        )
        values: dict[str, Any] = {"status": status}
        if status != JobStatus.PENDING:
            values |= {"started_at": started, "claimed_by": WORKER}
        if status == JobStatus.RUNNING:
            values["lease_expires_at"] = utcnow() + timedelta(seconds=30)
        if status.terminal:
            values["completed_at"] = started
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        ids[label] = job_id
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
    ids = asyncio.run(_seed(url, case, owner_name))
    ended = asyncio.run(_end(url, ids[case.ends], case))
    engine = create_engine(url)
    try:
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
def test_each_kind_of_end(database_url: str, name: str) -> None:
    case = CASES[name]
    result = _run_case(database_url, case, f"owner-{list(CASES).index(name)}")
    assert [ended[0] for ended in result["ended"]] == case.ended
    assert all(ended[5] == AGENT for ended in result["ended"])
    environment = result["environment"]
    for key, value in case.environment.items():
        actual = [p[0] for p in environment["packages"]] if key == "packages" else environment[key]
        assert actual == value, key
    jobs_after = {job[0]: job for job in result["jobs"]}
    for label, _, status in case.jobs:
        _, status_after, _, completed, leased = jobs_after[label]
        if label == case.ends and case.ended:
            assert (status_after, completed, leased) == (case.outcome.status, True, False)
        elif label in case.ended:  # queued behind a failed create
            assert (status_after, completed) == (JobStatus.FAILED, True)
        else:
            assert status_after == status, label


def test_the_function_sends_the_notifies_with_its_commit(database_url: str) -> None:
    """Other processes hear of each ended job and of a free slot (``darb_jobs``)."""
    case = CASES["create fails: queued jobs fail, the delete stays"]
    url = database_url
    ids = asyncio.run(_seed(url, case, "owner-notify"))
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
