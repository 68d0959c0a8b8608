"""A running job's progress reports on their way from the agent: handed to this
process's watchers at once (``EventBus.publish_progress``) and stored as the job's last
(``repo.progress``) at most once per ``STORE_INTERVAL``, plus the last one at the end.

Each store is a round trip and a NOTIFY that makes other processes' watchers re-read
the job, so the throttle bounds what a job costs however often its agent reports. A
failed store is only logged: the next report, or the end, stores a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.api.database.db import Database
from services.api.events import JOB_CHANGED_CHANNEL, EventBus
from services.api.repo import progress as stored_progress
from services.api.repo.progress import Progress

log = logging.getLogger(__name__)

STORE_INTERVAL = 0.5


class ProgressRecorder:
    """The progress of one job run by this control plane (``worker_id``)."""

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        job_id: str,
        worker_id: str,
        interval: float = STORE_INTERVAL,
    ) -> None:
        self._db = database
        self._bus = bus
        self._job_id = job_id
        self._worker_id = worker_id
        self._interval = interval
        channel, prefix = bus.notify_target(JOB_CHANGED_CHANNEL)
        self._notify = (channel, prefix + job_id)
        self._latest: Progress | None = None
        self._stored: Progress | None = None
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, progress: Progress) -> None:
        self._bus.publish_progress(self._job_id, progress)
        self._latest = progress
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"darb-progress-{self._job_id}")

    async def close(self) -> None:
        """Returns once the last report is stored (or storing it failed)."""
        self._closing.set()
        if self._task is not None:
            await self._task
        if self._latest is not None and self._latest != self._stored:
            await self._store(self._latest)

    async def _run(self) -> None:
        """Stores the latest report, then waits out the interval; ends once nothing new
        arrived meanwhile (``add`` starts it again) or the job's end is near."""
        while self._latest is not None and self._latest != self._stored:
            if self._closing.is_set():
                return  # ``close`` stores the last one
            await self._store(self._latest)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._interval)

    async def _store(self, progress: Progress) -> None:
        try:
            await stored_progress.store(
                self._db, self._job_id, self._worker_id, progress, self._notify
            )
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            log.warning(
                "storing the progress of job %s failed (%s: %s)",
                *(self._job_id, type(exc).__name__, reason),
            )
        else:
            self._stored = progress
