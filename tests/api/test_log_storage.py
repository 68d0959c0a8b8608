"""Log lines are stored in one statement per batch (an INSERT from arrays for a few lines
and COPY for many, each with its NOTIFY) and read back exactly, page by page, whatever
characters they hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.api.database.db import Database
from services.api.database.migrate import migrate
from services.api.events import JOB_CHANGED_CHANNEL, EventBus
from services.api.joblog import writer as line_writer
from services.api.joblog.writer import LineWriter
from services.api.metrics import Metrics
from services.api.records import LineRow
from services.api.repo import log_lines
from services.api.repo.models import Job, JobStatus, utcnow
from services.api.scheduling.executor_client import AgentLines
from shared.config import ApiLimits
from testkit.postgres import fresh_database, libpq_url
from testkit.schema import new_environment, new_user

AWKWARD = ["tab\there", "back\\slash \\N", "cr\rinside", "new\nline", "ünïcode 🙂", "", "\\."]


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as database_url:
        yield database_url


WORKER = "this-control-plane"


async def _job(database: Database) -> str:
    """A job running under ``WORKER``: only such a job's lines are stored."""
    _, job = await new_environment(database, await new_user(database, "owner"), "env")
    await database.run(_set_job, job.id, JobStatus.RUNNING, WORKER)
    return job.id


def _set_job(session: Session, job_id: str, status: JobStatus, claimed_by: str) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(status=status, claimed_by=claimed_by)
    )


CHANNEL = "darb_test_lines"


def _notifications(listener: psycopg.Connection) -> list[str]:
    return [notify.payload for notify in listener.notifies(timeout=1, stop_after=1)]


def test_lines_round_trip_in_batches_and_pages(url: str) -> None:
    start = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    rows = [
        LineRow(
            seq,
            "stderr" if seq % 3 == 0 else "stdout",
            start + timedelta(microseconds=seq // 100),  # lines read together share a time
            AWKWARD[seq % len(AWKWARD)] + f" {seq}",
        )
        for seq in range(1, 2501)
    ]

    listener = psycopg.connect(libpq_url(url), autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")

    async def scenario() -> None:
        database = Database(url)
        try:
            await migrate(database)
            job_id = await _job(database)
            few = log_lines.COPY_FROM_LINES - 1  # stored by the INSERT, the rest by COPY
            for batch in (rows[:few], rows[few:]):
                notify = (CHANNEL, f"stored {len(batch)}")
                assert await log_lines.store_lines(database, job_id, WORKER, batch, notify)
                assert _notifications(listener) == [f"stored {len(batch)}"]
            assert await database.run(log_lines.lines_after, job_id, 0) == rows
            assert await database.run(log_lines.lines_after, job_id, 1200, 100) == rows[1200:1300]
            text = await database.run(log_lines.log_text, job_id)
            assert text == "\n".join(row.text for row in rows)
        finally:
            await database.close()

    try:
        asyncio.run(scenario())
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("status", "claimed_by"),
    [(JobStatus.FAILED, WORKER), (JobStatus.RUNNING, "another-control-plane")],
    ids=["ended", "claimed-elsewhere"],
)
def test_lines_of_a_job_that_no_longer_runs_here_are_not_stored(
    url: str, status: JobStatus, claimed_by: str
) -> None:
    """A control plane whose lease ran out (another one then failed the job) must not add
    lines after the job's end: neither a trickle nor a flood is stored, nor announced."""
    start = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    rows = [LineRow(seq, "stdout", start, f"line {seq}") for seq in range(1, 1001)]
    few = log_lines.COPY_FROM_LINES - 1
    listener = psycopg.connect(libpq_url(url), autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")

    async def scenario() -> tuple[list[bool], list[LineRow]]:
        database = Database(url)
        try:
            await migrate(database)
            job_id = await _job(database)
            stored = [
                await log_lines.store_lines(database, job_id, WORKER, rows[:2], (CHANNEL, "1"))
            ]
            await database.run(_set_job, job_id, status, claimed_by)
            for batch in (rows[2:few], rows[few:]):  # an INSERT, then COPY
                stored.append(
                    await log_lines.store_lines(database, job_id, WORKER, batch, (CHANNEL, "2"))
                )
            return stored, await database.run(log_lines.lines_after, job_id, 0)
        finally:
            await database.close()

    try:
        stored, lines = asyncio.run(scenario())
        notified = [n.payload for n in listener.notifies(timeout=1)]
    finally:
        listener.close()
    assert stored == [True, False, False]
    assert lines == rows[:2]
    assert notified == ["1"]


def test_a_nul_byte_is_stored_as_the_replacement_character() -> None:
    """The agent already replaces NUL; the control plane does too, since PostgreSQL text
    cannot hold it and a batch that fails is retried forever."""
    start = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    rows = [LineRow(seq, "stdout", start, f"a\0b {seq}") for seq in range(1, 1001)]

    async def scenario(url: str) -> list[LineRow]:
        database = Database(url)
        try:
            await migrate(database)
            job_id = await _job(database)
            few = log_lines.COPY_FROM_LINES - 1  # an INSERT, then COPY
            for batch in (rows[:few], rows[few:]):
                await log_lines.store_lines(database, job_id, WORKER, batch, (CHANNEL, "stored"))
            return await database.run(log_lines.lines_after, job_id, 0)
        finally:
            await database.close()

    with fresh_database() as url:
        stored = asyncio.run(scenario(url))
    assert [row.text for row in stored] == [f"a\ufffdb {seq}" for seq in range(1, 1001)]


def test_a_trickle_of_lines_is_stored_by_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches that follow each other within ``TRICKLE_DELAY`` share one statement and
    its NOTIFY: a small job's three batches cost one round trip, not three. The delay is
    raised to 1 s here so that the 20 ms between batches is well inside it however
    loaded the machine; without the delay each batch would be a statement of its own."""

    async def scenario(url: str) -> tuple[int, list[str]]:
        database = Database(url)
        listener = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
        try:
            await migrate(database)
            job_id = await _job(database)
            await listener.execute(f"LISTEN {JOB_CHANGED_CHANNEL}")
            writer = LineWriter(
                database, EventBus(database), job_id, WORKER, ApiLimits(), Metrics()
            )
            for n in range(3):
                await writer.add(AgentLines([("stdout", utcnow(), f"line {n}")]))
                await asyncio.sleep(0.02)
            notifies = listener.notifies(timeout=1.5)
            stores = [n async for n in notifies if n.payload.endswith(job_id)]
            await writer.close()
            stored = await database.run(log_lines.lines_after, job_id, 0)
            return len(stores), [row.text for row in stored]
        finally:
            await listener.close()
            await database.close()

    monkeypatch.setattr(line_writer, "TRICKLE_DELAY", 1.0)
    with fresh_database() as url:
        stores, stored = asyncio.run(scenario(url))
    assert stored == ["line 0", "line 1", "line 2"]
    assert stores == 1
