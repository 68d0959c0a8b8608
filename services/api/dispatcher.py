"""Claims jobs from the table and runs each on its environment's executor agent.

Woken by ``EventBus.jobs_available`` (set on submit, on every job's end and by NOTIFY
from other processes); the poll interval is only a safety net. A running job holds a
lease that a heartbeat renews; the heartbeat also notices cancels asked for in
another process. Lines from the agent are numbered here and written by a ``LineWriter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta

import grpc

from services.api import payloads
from services.api.db import Database
from services.api.events import EventBus
from services.api.executor_client import AgentLine, ExecutorClient, ExecutorError
from services.api.models import JobStatus, utcnow
from services.api.outcomes import AgentState, Outcome, finish
from services.api.repo import jobs
from services.api.repo.jobs import ClaimedJob, LineRow

log = logging.getLogger(__name__)

# How long a busy (ABORTED) or unreachable (UNAVAILABLE) agent is retried before the
# job fails; only while the agent has sent nothing for this job.
RETRY_WINDOW = 60.0
CANCELLED_BY_REQUEST = "cancelled by request"
SHUTDOWN = "the control plane shut down while the job was running"
LEASE_EXPIRED = "the control plane running this job stopped (its lease expired)"


class LineWriter:
    """Numbers and stores a job's lines, batching whatever arrives during one commit,
    and hands each stored batch to the event bus for live watchers."""

    def __init__(self, database: Database, bus: EventBus, job_id: str) -> None:
        self._db = database
        self._bus = bus
        self._job_id = job_id
        self._pending: list[LineRow] = []
        self._next_seq = 1
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"darb-lines-{job_id}")

    def add(self, line: AgentLine) -> None:
        self._pending.append(LineRow(self._next_seq, line.stream, line.time, line.text))
        self._next_seq += 1
        self._wake.set()

    async def close(self) -> None:
        """Returns once every added line is stored."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._db.run(jobs.append_lines, self._job_id, batch)
                except Exception:
                    log.warning("storing log lines of job %s failed; retrying", self._job_id)
                    self._pending = batch + self._pending
                    await asyncio.sleep(0.5)
                    continue
                await self._bus.job_changed(self._job_id, batch)
            if self._closing:
                return


class Dispatcher:
    def __init__(
        self,
        database: Database,
        bus: EventBus,
        client: ExecutorClient,
        *,
        concurrency: int,
        poll_interval: float,
        lease: float,
    ) -> None:
        self._db = database
        self._bus = bus
        self._client = client
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._lease = timedelta(seconds=lease)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._loop_task: asyncio.Task[None] | None = None
        bus.on_cancel(self._cancel_requested)

    async def start(self) -> None:
        await self.fail_expired()
        self._loop_task = asyncio.create_task(self._loop(), name="darb-dispatcher")

    async def stop(self) -> None:
        """Stops claiming, then stops running jobs and records them as failed."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def fail_expired(self) -> None:
        """Fails jobs left running by a control plane that stopped renewing their lease."""
        for job_id in await self._db.run(jobs.expired, utcnow()):
            outcome = Outcome(JobStatus.FAILED, LEASE_EXPIRED)
            await self._finish(job_id, outcome, JobStatus.RUNNING, worker_id=None)

    async def _loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            self._bus.jobs_available.clear()
            try:
                await self._claim_all()
                if time.monotonic() - last_sweep > self._poll_interval:
                    last_sweep = time.monotonic()
                    await self.fail_expired()
            except Exception:
                log.exception("claiming jobs failed; retrying after the poll interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bus.jobs_available.wait(), self._poll_interval)

    async def _claim_all(self) -> None:
        while len(self._running) < self._concurrency:
            claimed = await self._db.run(jobs.claim_next, self.worker_id, self._lease)
            if claimed is None:
                return
            self._cancels[claimed.id] = asyncio.Event()
            await self._bus.job_changed(claimed.id)
            task = asyncio.create_task(self._run(claimed), name=f"darb-job-{claimed.id}")
            self._running[claimed.id] = task
            task.add_done_callback(lambda _t, job_id=claimed.id: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._cancels.pop(job_id, None)
        self._bus.jobs_available.set()

    def _cancel_requested(self, job_id: str) -> None:
        if job_id in self._cancels:
            self._cancels[job_id].set()

    async def _run(self, job: ClaimedJob) -> None:
        cancel = self._cancels[job.id]
        writer = LineWriter(self._db, self._bus, job.id)
        heartbeat = asyncio.create_task(self._heartbeat(job.id, cancel))
        operation = asyncio.create_task(self._execute(job, writer))
        try:
            cancelled = asyncio.create_task(cancel.wait())
            await asyncio.wait({operation, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            cancelled.cancel()
            if operation.done():
                outcome = operation.result()
            else:
                await _stop(operation)
                outcome = Outcome(JobStatus.CANCELLED, CANCELLED_BY_REQUEST)
        except asyncio.CancelledError:
            await _stop(operation)
            outcome = Outcome(JobStatus.FAILED, SHUTDOWN)
            raise
        except Exception:
            log.exception("job %s failed in the control plane", job.id)
            outcome = Outcome(JobStatus.FAILED, "internal error in the control plane")
        finally:
            await _stop(heartbeat)
            await writer.close()
            await self._finish(job.id, outcome, JobStatus.RUNNING, self.worker_id)

    async def _execute(self, job: ClaimedJob, writer: LineWriter) -> Outcome:
        deadline = time.monotonic() + RETRY_WINDOW
        delay = 0.2
        while True:
            heard = False
            try:
                async for event in self._client.run(job.executor, job.environment_id, job.payload):
                    heard = True
                    if isinstance(event, AgentLine):
                        writer.add(event)
                        continue
                    status = JobStatus.COMPLETED if event.success else JobStatus.FAILED
                    return Outcome(status, "" if event.success else event.error, event.state)
                return Outcome(JobStatus.FAILED, "the executor ended without a result")
            except ExecutorError as exc:
                if exc.retryable and not heard and time.monotonic() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                gone = exc.code == grpc.StatusCode.NOT_FOUND
                if gone and isinstance(job.payload, payloads.DeletePayload):
                    return Outcome(JobStatus.COMPLETED, "", AgentState())
                return Outcome(JobStatus.FAILED, f"executor: {exc.message}")

    async def _heartbeat(self, job_id: str, cancel: asyncio.Event) -> None:
        while True:
            try:
                state = await self._db.run(jobs.heartbeat, job_id, self.worker_id, self._lease)
            except Exception:  # the database is away; the next beat tries again
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)
            else:
                if state is None or state:
                    cancel.set()
            await asyncio.sleep(self._lease.total_seconds() / 3)

    async def _finish(
        self, job_id: str, outcome: Outcome, expected: JobStatus, worker_id: str | None
    ) -> None:
        ended = await self._db.run(finish, job_id, outcome, expected, worker_id)
        for ended_id in ended:
            await self._bus.job_changed(ended_id)
        if ended:
            await self._bus.jobs_queued()


async def _stop(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
