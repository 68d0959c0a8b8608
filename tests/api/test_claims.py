"""The claim seam: concurrent claimers on one database never take a job twice, and
never run two jobs of one environment at once. Also checks the two-dispatcher setup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from darb.v1 import common_pb2
from services.api import payloads
from services.api.db import Database, sqlite_engine
from services.api.migrate import migrate
from services.api.models import Job, JobStatus
from services.api.outcomes import Outcome, finish
from services.api.repo import environments, jobs, users
from tests.api.control_plane import ApiProcess
from tests.support.postgres import fresh_database

ENVIRONMENTS = 12
CLAIMERS = 8


@pytest.fixture(params=["postgresql", "sqlite"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
        asyncio.run(_migrate(url))
        yield url
        return
    with fresh_database() as url:
        asyncio.run(_migrate(url))
        yield url


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await migrate(database)
    finally:
        await database.close()


def _seed(session: Session) -> None:
    owner = users.create(session, "owner", "x", admin=False)
    for index in range(ENVIRONMENTS):
        environment = environments.create(session, owner, f"env-{index}", "pixi", ["c"], "agent")
        jobs.submit(session, environment, payloads.CreatePayload(f"env-{index}", ["c"], ["a"]))
        jobs.submit(session, environment, payloads.InstallPayload(["b"]))


def test_concurrent_claimers_take_each_job_once(sync_url: str) -> None:
    # The same engines the service uses: BEGIN IMMEDIATE on SQLite, psycopg on PostgreSQL.
    engine = sqlite_engine(sync_url) if sync_url.startswith("sqlite") else create_engine(sync_url)
    with Session(engine) as session, session.begin():
        _seed(session)

    def claim_all(worker: int) -> list[str]:
        claimed = []
        while True:
            with Session(engine) as session, session.begin():
                job = jobs.claim_next(session, f"w{worker}", timedelta(seconds=30))
            if job is None:
                return claimed
            claimed.append(job.id)

    def round_of_claims() -> list[str]:
        with ThreadPoolExecutor(CLAIMERS) as pool:
            claimed = [job for batch in pool.map(claim_all, range(CLAIMERS)) for job in batch]
        assert len(claimed) == len(set(claimed))
        return claimed

    first = round_of_claims()
    with Session(engine) as session:
        rows = session.scalars(select(Job).where(Job.id.in_(first))).all()
    # Only the head of each environment's queue ran: one job per environment.
    assert len(first) == ENVIRONMENTS
    assert len({row.environment_id for row in rows}) == ENVIRONMENTS
    assert all(row.type == "CREATE_ENVIRONMENT" for row in rows)
    for job_id in first:
        with Session(engine) as session, session.begin():
            finish(session, job_id, Outcome(JobStatus.COMPLETED), JobStatus.RUNNING)
    second = round_of_claims()
    assert len(second) == ENVIRONMENTS and not set(first) & set(second)
    engine.dispose()


def test_claim_query_locks_on_postgresql_only() -> None:
    pg = str(jobs.claim_query("postgresql").compile(dialect=postgresql.dialect()))
    lite = str(jobs.claim_query("sqlite").compile(dialect=sqlite.dialect()))
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
