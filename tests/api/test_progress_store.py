"""The stored copy of a job's progress (``scheduling.progress.ProgressRecorder`` and
``repo.progress``) against a real database: throttled, the last one always stored, kept
once the job ended, and never written by a control plane the job no longer runs under."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from services.api.database.db import Database
from services.api.events import EventBus
from services.api.records import Outcome
from services.api.repo import jobs
from services.api.repo import progress as stored_progress
from services.api.repo.finishes import end_job
from services.api.repo.models import JobStatus
from services.api.repo.progress import Progress
from services.api.scheduling.progress import ProgressRecorder
from testkit.postgres import fresh_database
from testkit.schema import QUIET, migrate_url, new_environment, new_user

INTERVAL = 0.5


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as url:
        migrate_url(url)
        yield url


def test_the_recorder_stores_throttled_and_the_last_report(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores: list[Progress] = []
    real_store = stored_progress.store

    async def counting_store(*args: Any) -> bool:
        stores.append(args[3])
        return await real_store(*args)

    monkeypatch.setattr(stored_progress, "store", counting_store)

    async def scenario() -> None:
        database = Database(url)
        try:
            owner = await new_user(database, "owner")
            _, job = await new_environment(database, owner, "env")
            claimed = await jobs.claim_next(database, "w1", timedelta(seconds=30), QUIET)
            assert claimed is not None and claimed.id == job.id
            bus = EventBus(database)
            recorder = ProgressRecorder(database, bus, job.id, "w1", INTERVAL)
            reports = [Progress("DOWNLOADING", 0, 1, n, 100, n + 1) for n in range(100)]
            with bus.watch(job.id) as subscription:
                started = time.monotonic()
                for report in reports:
                    recorder.add(report)
                    await asyncio.sleep(0.01)
                # This process's watchers get every report at once; of one phase the latest.
                assert subscription.take_progress() == [reports[-1]]
                await recorder.close()
                took = time.monotonic() - started
            assert stores[-1] == reports[-1], "the last report is always stored"
            assert 2 <= len(stores) <= took / INTERVAL + 2, (len(stores), took)
            row = await database.run(jobs.get, job.id)
            assert Progress.from_json(row.progress) == reports[-1]

            # The job ended (here: as when another control plane failed it): it keeps
            # its last progress, and a late report is not stored.
            outcome = Outcome(JobStatus.FAILED, "lease expired")
            await end_job(database, bus, job.id, outcome, JobStatus.RUNNING)
            late = ProgressRecorder(database, bus, job.id, "w1", INTERVAL)
            late.add(Progress("LINKING", 1, 1, 100, 100, 10**6))
            await late.close()
            row = await database.run(jobs.get, job.id)
            assert Progress.from_json(row.progress) == reports[-1]
        finally:
            await database.close()

    asyncio.run(scenario())
