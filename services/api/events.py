"""Wake-ups between the parts of the control plane, within and across processes.

Three kinds of event: jobs became claimable (wakes dispatchers), a job changed (its
status, or new log lines: wakes watchers) and a cancel was requested (wakes the
dispatcher running the job). In-process subscribers hear them at once; log lines travel
in memory, published before they are stored, and a second event says up to which seq
they are stored (watchers that missed lines read those from the table). Every event is
also sent with NOTIFY, and events from other processes arrive through
LISTEN as bare "job changed" pokes that watchers answer by reading the table. The
database stays the source of truth; events only say "look now". Two more say that a
cached copy is out of date: a user changed (the token cache) and an environment's row
changed (the GetEnvironment cache; sent by a trigger, see ``repo/schema.sql``).
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
from sqlalchemy.orm import Session

from services.api.database.db import Database
from services.api.records import LineRow
from services.api.repo.progress import Progress

log = logging.getLogger(__name__)

JOBS_CHANNEL = "darb_jobs"
JOB_CHANGED_CHANNEL = "darb_job_changed"
CANCEL_CHANNEL = "darb_job_cancel"
USER_CHANGED_CHANNEL = "darb_user_changed"
# Sent by a trigger on every UPDATE or DELETE of an environment row (repo/schema.sql),
# whatever made it; the payload is the environment's id.
ENVIRONMENT_CHANGED_CHANNEL = "darb_environment_changed"
CHANNELS = (
    JOBS_CHANNEL,
    JOB_CHANGED_CHANNEL,
    CANCEL_CHANNEL,
    USER_CHANGED_CHANNEL,
    ENVIRONMENT_CHANGED_CHANNEL,
)
# A watcher this far behind is told to re-read the table instead of growing memory. The
# batches are shared by all watchers of the job: this bounds references, not copies.
MAX_BUFFERED_LINES = 20_000
# Progress reports of different phases a watcher may have waiting (a job has a few).
MAX_BUFFERED_PROGRESS = 16


@dataclass(eq=False)
class Subscription:
    """What a watcher of one job has been told since it last looked."""

    batches: deque[list[LineRow]] = field(default_factory=deque)
    buffered: int = 0  # lines in ``batches``
    # True when something happened that is not in ``batches``: read the database.
    stale: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The highest seq known to be stored, and the seq the watcher misses (0: none); it
    # waits on ``stored_ready``, which is set once that seq can be read from the table.
    stored: int = 0
    gap_at: int = 0
    stored_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Progress reports published since the watcher last took them: of each run of one
    # phase only the latest, so every phase change reaches the watcher.
    progress: list[Progress] = field(default_factory=list)

    def take_progress(self) -> list[Progress]:
        progress, self.progress = self.progress, []
        return progress

    def take(self) -> tuple[list[list[LineRow]], bool]:
        batches, stale = list(self.batches), self.stale
        self.batches.clear()
        self.buffered = 0
        self.stale = False
        self.ready.clear()
        return batches, stale


class EventBus:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._origin = uuid.uuid4().hex
        self._watchers: dict[str, set[Subscription]] = {}
        self._cancel_handlers: list[Callable[[str], None]] = []
        self._user_handlers: list[Callable[[str], None]] = []
        self._environment_handlers: list[Callable[[str | None], None]] = []
        self._listening_handlers: list[Callable[[bool], None]] = []
        self.jobs_available = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
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

    def on_user_changed(self, handler: Callable[[str], None]) -> None:
        """``handler(user_id)`` for a change committed in another process."""
        self._user_handlers.append(handler)

    def user_changed_here(self, user_id: str) -> None:
        """Call after a commit of this process that changed the user (their account or
        their groups), which also sent the NOTIFY for other processes (``notify_in``)."""
        for handler in self._user_handlers:
            handler(user_id)

    def on_environment_changed(self, handler: Callable[[str | None], None]) -> None:
        """``handler(environment_id)`` for a change to an environment's row, committed
        here or in another process; ``handler(None)`` when which one is not known."""
        self._environment_handlers.append(handler)

    def environment_changed_here(self, environment_id: str | None) -> None:
        """Call after a commit of this process that may have changed the environment
        (None: some environment), before answering: its trigger's NOTIFY arrives a
        moment later, and this process's next read must not be older than its write."""
        for handler in self._environment_handlers:
            handler(environment_id)

    def on_listening(self, handler: Callable[[bool], None]) -> None:
        """``handler(True)`` once events from other processes arrive, ``False`` when they
        may be missed (the LISTEN connection is down)."""
        self._listening_handlers.append(handler)

    def notify_target(self, channel: str) -> tuple[str, str]:
        """``channel`` and the payload prefix for a NOTIFY that SQL sends itself (the
        key follows the prefix)."""
        return channel, f"{self._origin}:"

    def notify_in(self, session: Session, channel: str, key: str = "") -> None:
        """NOTIFY as part of the caller's transaction: sent by its commit, and only then,
        with no round trip of its own. In-process subscribers are the caller's business."""
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": channel, "payload": f"{self._origin}:{key}"},
        )

    def changed_here(self, job_id: str) -> None:
        """After a commit that changed the job and sent its own NOTIFY (``notify_in``):
        only this process's watchers are left to tell."""
        self._poke(job_id, None)

    def jobs_ended_here(self, job_ids: list[str], environment_id: str | None) -> None:
        """After the commit of ``finishes.end_job``, whose NOTIFYs told the other
        processes: wakes this process's watchers and dispatcher, and drops its cached
        environment (None: which one is not known here)."""
        if not job_ids:
            return
        self.environment_changed_here(environment_id)
        for job_id in job_ids:
            self._poke(job_id, None)
        self.jobs_available.set()

    def publish_lines(self, job_id: str, lines: list[LineRow]) -> None:
        """Hands consecutive new lines to this process's watchers before they are stored,
        so watching costs no database round trip; ``lines_stored`` follows."""
        if lines and job_id in self._watchers:
            self._poke(job_id, lines)

    def publish_progress(self, job_id: str, progress: Progress) -> None:
        """Hands a progress report to this process's watchers (other processes read the
        stored one when the store's NOTIFY pokes them; see ``scheduling.progress``)."""
        for subscription in self._watchers.get(job_id, ()):
            reports = subscription.progress
            if reports and reports[-1].phase == progress.phase:
                reports[-1] = progress
            elif len(reports) < MAX_BUFFERED_PROGRESS:
                reports.append(progress)
            else:
                reports[-1] = progress
            subscription.ready.set()

    def lines_stored(self, job_id: str, last_seq: int) -> None:
        """Call after the commit that stored lines up to ``last_seq`` (which also sent
        the NOTIFY for other processes, ``notify_in``): wakes the watchers of this
        process that wait for missed lines to be readable."""
        for subscription in self._watchers.get(job_id, ()):
            subscription.stored = max(subscription.stored, last_seq)
            if subscription.gap_at and last_seq >= subscription.gap_at:
                subscription.stored_ready.set()

    async def cancel_requested(self, job_id: str) -> None:
        self._cancel(job_id)
        await self._notify(CANCEL_CHANNEL, job_id)

    def _poke(self, job_id: str, lines: list[LineRow] | None) -> None:
        for subscription in self._watchers.get(job_id, ()):
            if lines and subscription.buffered + len(lines) <= MAX_BUFFERED_LINES:
                subscription.batches.append(lines)
                subscription.buffered += len(lines)
            else:
                subscription.batches.clear()
                subscription.buffered = 0
                subscription.stale = True
                subscription.stored_ready.set()  # something to read from the table
            subscription.ready.set()

    def _cancel(self, job_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(job_id)

    async def _notify(self, channel: str, job_id: str) -> None:
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
        if channel == ENVIRONMENT_CHANGED_CHANNEL:  # from the trigger: any process
            self.environment_changed_here(payload)
            return
        origin, _, job_id = payload.partition(":")
        if origin == self._origin:
            return
        if channel == JOBS_CHANNEL:
            self.jobs_available.set()
        elif channel == JOB_CHANGED_CHANNEL:
            self._poke(job_id, None)
        elif channel == CANCEL_CHANNEL:
            self._cancel(job_id)
        elif channel == USER_CHANGED_CHANNEL:
            for handler in self._user_handlers:
                handler(job_id)

    def _set_listening(self, listening: bool) -> None:
        for handler in self._listening_handlers:
            handler(listening)

    def _everything_changed(self) -> None:
        """After a gap in listening: assume every event was missed."""
        self.jobs_available.set()
        for job_id in list(self._watchers):
            self._poke(job_id, None)

    async def _listen(self) -> None:
        conninfo = self._db.conninfo
        while True:
            try:
                async for notify in self._notifications(conninfo):
                    self._deliver(notify.channel, notify.payload)
            except (psycopg.Error, OSError) as exc:  # one line a second while the database is away
                self._set_listening(False)
                reason = str(exc).splitlines()[0] if str(exc) else ""
                log.warning(
                    "LISTEN connection lost (%s: %s); reconnecting", type(exc).__name__, reason
                )
            await asyncio.sleep(1)

    async def _notifications(self, conninfo: str) -> AsyncIterator[psycopg.Notify]:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            for channel in CHANNELS:
                await conn.execute(f"LISTEN {channel}")
            self._everything_changed()
            self._set_listening(True)
            async for notify in conn.notifies():
                yield notify
