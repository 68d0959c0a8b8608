"""A running job's log lines on their way from the agent: numbered and capped
(``cap``), handed to this process's watchers at once, and stored in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.api.database.db import Database
from services.api.events import JOB_CHANGED_CHANNEL, EventBus
from services.api.joblog.cap import LogCap
from services.api.metrics import Metrics
from services.api.records import LineBatch, LineRow
from services.api.repo import log_lines
from services.api.scheduling.executor_client import AgentLines
from shared.config import ApiLimits

log = logging.getLogger(__name__)

# Lines handed to watchers but not stored yet; beyond either bound ``add`` waits.
MAX_UNSTORED_LINES = 20_000
MAX_UNSTORED_CHARS = 8 * 2**20
# A trickle of lines waits this long for the lines that follow, so that they share one
# statement: a small job's lines come in a few batches closer together than this (see
# docs/benchmarks.md), and each store is a round trip and a NOTIFY. Watchers in this
# process get lines from memory at once; only other processes' watchers and GetJob see
# them this much later. A flood (``log_lines.COPY_FROM_LINES`` pending) and a job's end
# are stored without waiting.
TRICKLE_DELAY = 0.025


class LineWriter:
    """Numbers a job's lines, hands each batch to this process's watchers at once (from
    memory, before it is stored) and stores whatever arrived during ``TRICKLE_DELAY`` or
    one commit with one statement, whose transaction also sends the NOTIFY for other
    processes.

    ``add`` waits while too much is not stored yet: the dispatcher then stops reading the
    agent's stream, and gRPC flow control holds back the agent and, through its pipe, the
    job's process. Memory stays bounded whatever a job prints. Lines are stored only
    while the job runs here: after our lease ran out and another control plane ended the
    job, they are dropped (``log_lines.store_lines``).
    """

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        job_id: str,
        worker_id: str,
        limits: ApiLimits,
        metrics: Metrics,
    ) -> None:
        self._db = database
        self._bus = bus
        self._job_id = job_id
        self._worker_id = worker_id
        self._dropped = 0  # lines of a job that no longer runs here
        self._metrics = metrics
        self._pending: list[LineRow] = []
        self._unstored = 0  # lines, pending or being stored
        self._unstored_chars = 0
        self._cap = LogCap(limits)
        self._wake = asyncio.Event()
        self._store_now = asyncio.Event()  # a flood, or the end: do not wait
        self._stored = asyncio.Event()
        self._closing = False
        channel, prefix = bus.notify_target(JOB_CHANGED_CHANNEL)
        self._notify = (channel, prefix + job_id)
        self._task = asyncio.create_task(self._run(), name=f"darb-lines-{job_id}")

    async def add(self, lines: AgentLines) -> None:
        """Returns once there is room for more (see the class docstring)."""
        cut = self._cap.cut_lines
        rows = self._cap.extend(lines.lines)
        # Numbered as the agent numbered them and none cut: the agent's message is these
        # rows, and watchers can send its bytes (nearly always so within the head).
        same = rows and rows[0].seq == lines.first_seq and len(rows) == len(lines.lines)
        wire = lines.message if same and cut == self._cap.cut_lines else None
        self._publish(LineBatch(rows, wire))
        while self._unstored >= MAX_UNSTORED_LINES or self._unstored_chars >= MAX_UNSTORED_CHARS:
            self._stored.clear()
            await self._stored.wait()

    async def close(self) -> None:
        """Returns once every added line is stored."""
        self._publish(LineBatch(self._cap.finish()))
        self._closing = True
        self._store_now.set()
        self._wake.set()
        await self._task

    def _publish(self, rows: LineBatch) -> None:
        if rows:
            self._bus.publish_lines(self._job_id, rows)
            self._pending += rows
            self._unstored += len(rows)
            self._unstored_chars += sum(len(row.text) for row in rows)
            if len(self._pending) >= log_lines.COPY_FROM_LINES:
                self._store_now.set()
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._store_now.wait(), TRICKLE_DELAY)
            self._wake.clear()
            if not self._closing:
                self._store_now.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    ours = await log_lines.store_lines(
                        self._db, self._job_id, self._worker_id, batch, self._notify
                    )
                except Exception:
                    log.warning("storing log lines of job %s failed; retrying", self._job_id)
                    self._pending = batch + self._pending
                    await asyncio.sleep(0.5)
                    continue
                self._unstored -= len(batch)
                self._unstored_chars -= sum(len(row.text) for row in batch)
                self._stored.set()
                if not ours:  # the job ended elsewhere (our lease ran out): drop them
                    self._dropped += len(batch)
                    continue
                self._metrics.log_lines.inc(len(batch))
                self._bus.lines_stored(self._job_id, batch[-1].seq)
            if self._closing:
                if self._dropped:
                    log.warning("job %s ended elsewhere: %d of its lines were not stored",
                                self._job_id, self._dropped)  # fmt: skip
                return
