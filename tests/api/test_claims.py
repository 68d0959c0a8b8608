"""The claim seam: concurrent claimers on one database never take a job twice, and
never run two jobs of one environment at once. Also checks the two-dispatcher setup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from darb.v1 import common_pb2
from services.api import payloads
from services.api.database.db import Database
from services.api.events import EventBus
from services.api.records import Outcome
from services.api.repo import jobs
from services.api.repo.finishes import end_job
from services.api.repo.models import Environment, EnvironmentStatus, Job, JobStatus
from testkit.control_plane import ApiProcess
from testkit.postgres import fresh_database
from testkit.schema import QUIET, migrate_url, new_environment, new_user

ENVIRONMENTS = 12
CLAIMERS = 8


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as url:
        migrate_url(url)
        yield url


async def _seed(database: Database) -> None:
    owner = await new_user(database, "owner")
    for index in range(ENVIRONMENTS):
        environment, _ = await new_environment(database, owner, f"env-{index}")
        await database.run(jobs.submit, environment, payloads.InstallPayload(["b"]), owner.id)


def test_concurrent_claimers_take_each_job_once(url: str) -> None:
    # The service's own path: each claimer has its own Database (so its own connections),
    # as separate control planes would.
    engine = create_engine(url)

    async def seed() -> None:
        database = Database(url)
        try:
            await _seed(database)
        finally:
            await database.close()

    asyncio.run(seed())

    async def claim_all(worker: int) -> list[str]:
        database, claimed = Database(url), []
        try:
            lease = timedelta(seconds=30)
            while job := await jobs.claim_next(database, f"w{worker}", lease, QUIET):
                claimed.append(job.id)
        finally:
            await database.close()
        return claimed

    async def claimers() -> list[list[str]]:
        return await asyncio.gather(*(claim_all(worker) for worker in range(CLAIMERS)))

    def round_of_claims() -> list[str]:
        claimed = [job for batch in asyncio.run(claimers()) for job in batch]
        assert len(claimed) == len(set(claimed))
        return claimed

    first = round_of_claims()
    with Session(engine) as session:
        rows = session.scalars(select(Job).where(Job.id.in_(first))).all()
        environment_rows = session.scalars(select(Environment)).all()
    # Only the head of each environment's queue ran: one job per environment.
    assert len(first) == ENVIRONMENTS
    assert len({row.environment_id for row in rows}) == ENVIRONMENTS
    assert all(row.type == "CREATE_ENVIRONMENT" for row in rows)
    assert all(row.status == JobStatus.RUNNING and row.lease_expires_at for row in rows)
    assert all(row.status == EnvironmentStatus.CREATING for row in environment_rows)
    asyncio.run(_finish_all(url, first))
    second = round_of_claims()
    assert len(second) == ENVIRONMENTS and not set(first) & set(second)
    engine.dispose()


async def _finish_all(url: str, job_ids: list[str]) -> None:
    database = Database(url)
    try:
        bus = EventBus(database)
        for job_id in job_ids:
            await end_job(database, bus, job_id, Outcome(JobStatus.COMPLETED), JobStatus.RUNNING)
    finally:
        await database.close()


def test_the_claim_skips_locked_rows() -> None:
    assert "FOR UPDATE OF jobs SKIP LOCKED" in jobs.CLAIM.postgres_sql


def test_two_control_planes_on_one_database_share_the_work(
    api: ApiProcess, api_factory: Callable[..., ApiProcess], database_url: str
) -> None:
    second = api_factory(database_url)
    clients = [api.new_user(), second.new_user()]
    created = [clients[i % 2].create(f"two-{i}", ["acme-core"]) for i in range(10)]
    installs = [
        clients[i % 2].install(response.environment.id, ["acme-utils"])
        for i, response in enumerate(created)
    ]
    for i, response in enumerate(created):
        assert clients[i % 2].wait(response.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    for i, job in enumerate(installs):
        finished = clients[i % 2].wait(job.id)
        # A second run of the same job would have collided on its log lines' keys or
        # been refused by the agent (ABORTED) and left the job failed.
        assert finished.status == common_pb2.JOB_STATUS_COMPLETED, finished.error
        # One environment's timeline never runs backwards, whichever control plane
        # ended the create and claimed the install: both times are the database's.
        create = clients[i % 2].get_job(created[i].job.id)
        assert create.created_at.ToNanoseconds() <= create.started_at.ToNanoseconds()
        assert create.started_at.ToNanoseconds() <= create.completed_at.ToNanoseconds()
        assert create.completed_at.ToNanoseconds() <= finished.started_at.ToNanoseconds()
        assert finished.started_at.ToNanoseconds() <= finished.completed_at.ToNanoseconds()
