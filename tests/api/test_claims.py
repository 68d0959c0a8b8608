"""The claim seam: concurrent claimers on one database never take a job twice, and
never run two jobs of one environment at once. Also checks the two-dispatcher setup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from darb.v1 import common_pb2
from services.api import payloads
from services.api.db import Database, sqlite_engine
from services.api.models import Environment, EnvironmentStatus, Job, JobStatus
from services.api.outcomes import Outcome, finish
from services.api.repo import environments, jobs, users
from tests.api.control_plane import ApiProcess
from tests.support.postgres import fresh_database
from tests.support.schema import migrate_url

ENVIRONMENTS = 12
CLAIMERS = 8


@pytest.fixture(params=["postgresql", "sqlite"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
        migrate_url(url)
        yield url
        return
    with fresh_database() as url:
        migrate_url(url)
        yield url


def _seed(session: Session) -> None:
    owner = users.create(session, "owner", "x", admin=False)
    for index in range(ENVIRONMENTS):
        environment = environments.create(session, owner, f"env-{index}", "pixi", ["c"], "agent")
        jobs.submit(session, environment, payloads.CreatePayload(f"env-{index}", ["c"], ["a"]))
        jobs.submit(session, environment, payloads.InstallPayload(["b"]))


def test_concurrent_claimers_take_each_job_once(sync_url: str) -> None:
    # The service's own path: each claimer has its own Database (so its own connections),
    # as separate control planes would.
    engine = sqlite_engine(sync_url) if sync_url.startswith("sqlite") else create_engine(sync_url)
    with Session(engine) as session, session.begin():
        _seed(session)

    async def claim_all(worker: int) -> list[str]:
        database, claimed = Database(sync_url), []
        try:
            lease = timedelta(seconds=30)
            notify = ("darb_test_claims", "test:")  # nobody listens
            while job := await jobs.claim_next(database, f"w{worker}", lease, notify):
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
    for job_id in first:
        with Session(engine) as session, session.begin():
            finish(session, job_id, Outcome(JobStatus.COMPLETED), JobStatus.RUNNING)
    second = round_of_claims()
    assert len(second) == ENVIRONMENTS and not set(first) & set(second)
    engine.dispose()


def test_claim_query_locks_on_postgresql_only() -> None:
    pg = jobs.CLAIM_IN_ONE_STATEMENT.postgres_sql
    lite = str(jobs.CLAIM.statement.compile(dialect=sqlite.dialect()))
    assert "FOR UPDATE OF jobs SKIP LOCKED" in pg
    assert "FOR UPDATE" not in lite


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
