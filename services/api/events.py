"""Wake-ups between the parts of the control plane, within and across processes.

Three kinds of event: jobs became claimable (wakes dispatchers), a job changed (its
status, or new log lines: wakes watchers) and a cancel was requested (wakes the
dispatcher running the job). In-process subscribers hear them at once; log lines travel
in memory. On PostgreSQL every event is also sent with NOTIFY, and events from other
processes arrive through LISTEN as bare "job changed" pokes that watchers answer by
reading the table. The database stays the source of truth; events only say "look now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from sqlalchemy import text

from services.api.db import Database
from services.api.repo.jobs import LineRow

log = logging.getLogger(__name__)

JOBS_CHANNEL = "darb_jobs"
JOB_CHANGED_CHANNEL = "darb_job_changed"
CANCEL_CHANNEL = "darb_job_cancel"
# A watcher this far behind is told to re-read the table instead of growing memory.
MAX_BUFFERED_BATCHES = 1000


@dataclass(eq=False)
class Subscription:
    """What a watcher of one job has been told since it last looked."""

    batches: deque[list[LineRow]] = field(default_factory=deque)
    # True when something happened that is not in ``batches``: read the database.
    stale: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> tuple[list[list[LineRow]], bool]:
        batches, stale = list(self.batches), self.stale
        self.batches.clear()
        self.stale = False
        self.ready.clear()
        return batches, stale


class EventBus:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._origin = uuid.uuid4().hex
        self._watchers: dict[str, set[Subscription]] = {}
        self._cancel_handlers: list[Callable[[str], None]] = []
        self.jobs_available = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._db.is_postgres:
            self._listener = asyncio.create_task(self._listen(), name="darb-listen")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    @property
    def subscription_count(self) -> int:
        """Open watch subscriptions; a disconnected watcher must not leave one behind."""
        return sum(len(watchers) for watchers in self._watchers.values())

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Subscription]:
        subscription = Subscription()
        self._watchers.setdefault(job_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            watchers = self._watchers[job_id]
            watchers.discard(subscription)
            if not watchers:
                del self._watchers[job_id]

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    async def jobs_queued(self) -> None:
        self.jobs_available.set()
        await self._notify(JOBS_CHANNEL, "")

    async def job_changed(self, job_id: str, lines: list[LineRow] | None = None) -> None:
        """Call after the commit that stored the change."""
        self._poke(job_id, lines)
        await self._notify(JOB_CHANGED_CHANNEL, job_id)

    async def cancel_requested(self, job_id: str) -> None:
        self._cancel(job_id)
        await self._notify(CANCEL_CHANNEL, job_id)

    def _poke(self, job_id: str, lines: list[LineRow] | None) -> None:
        for subscription in self._watchers.get(job_id, ()):
            if lines and len(subscription.batches) < MAX_BUFFERED_BATCHES:
                subscription.batches.append(lines)
            else:
                subscription.batches.clear()
                subscription.stale = True
            subscription.ready.set()

    def _cancel(self, job_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(job_id)

    async def _notify(self, channel: str, job_id: str) -> None:
        if not self._db.is_postgres:
            return
        payload = f"{self._origin}:{job_id}"
        try:
            await self._db.run(
                lambda s: s.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": channel, "payload": payload},
                )
            )
        except Exception:  # the slow polls cover a lost notification
            log.warning("could not send NOTIFY on %s", channel, exc_info=True)

    def _deliver(self, channel: str, payload: str) -> None:
        origin, _, job_id = payload.partition(":")
        if origin == self._origin:
            return
        if channel == JOBS_CHANNEL:
            self.jobs_available.set()
        elif channel == JOB_CHANGED_CHANNEL:
            self._poke(job_id, None)
        elif channel == CANCEL_CHANNEL:
            self._cancel(job_id)

    def _everything_changed(self) -> None:
        """After a gap in listening: assume every event was missed."""
        self.jobs_available.set()
        for job_id in list(self._watchers):
            self._poke(job_id, None)

    async def _listen(self) -> None:
        conninfo = self._db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                async for notify in self._notifications(conninfo):
                    self._deliver(notify.channel, notify.payload)
            except (psycopg.Error, OSError) as exc:  # one line a second while the database is away
                reason = str(exc).splitlines()[0] if str(exc) else ""
                log.warning(
                    "LISTEN connection lost (%s: %s); reconnecting", type(exc).__name__, reason
                )
            await asyncio.sleep(1)

    async def _notifications(self, conninfo: str) -> AsyncIterator[psycopg.Notify]:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            for channel in (JOBS_CHANNEL, JOB_CHANGED_CHANNEL, CANCEL_CHANNEL):
                await conn.execute(f"LISTEN {channel}")
            self._everything_changed()
            async for notify in conn.notifies():
                yield notify
