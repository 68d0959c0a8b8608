"""Claims jobs from the table and runs each on its environment's executor agent.

Woken by ``EventBus.jobs_available`` (set on submit, on every job's end and by NOTIFY
from other processes); the poll interval is only a safety net. A running job holds a
lease that a heartbeat renews; the heartbeat also notices cancels asked for in
another process. Lines from the agent go to a ``joblog.writer.LineWriter``, progress
reports to a ``progress.ProgressRecorder``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import uuid
from asyncio import FIRST_COMPLETED
from datetime import timedelta
from typing import Any

import grpc
import psycopg
from sqlalchemy.exc import SQLAlchemyError

from services.api import payloads
from services.api.database.db import Database
from services.api.events import JOB_CHANGED_CHANNEL, EventBus
from services.api.joblog.writer import LineWriter
from services.api.metrics import JobObserver, Metrics
from services.api.records import (
    CANCELLED_BY_REQUEST,
    AgentState,
    ClaimedJob,
    LockToApply,
    Outcome,
)
from services.api.repo import environments, jobs, versions
from services.api.repo.finishes import end_job
from services.api.repo.models import JobStatus
from services.api.repo.progress import Progress
from services.api.scheduling.agents import AgentMonitor
from services.api.scheduling.executor_client import (
    AgentLines,
    ExecutorClient,
    ExecutorError,
    Operation,
)
from services.api.scheduling.progress import ProgressRecorder
from services.api.scheduling.rebuilds import Rebuilder, is_missing, is_rebuild_job
from services.api.scheduling.takeover import FENCE_TIMEOUT, Takeover
from shared.config import ApiLimits

log = logging.getLogger(__name__)

# How long a busy (ABORTED) agent is retried before the job fails; only while the agent
# has sent nothing for this job. An unreachable one is waited for up to the agent lease.
RETRY_WINDOW = 60.0
SHUTDOWN = (
    "the control plane shut down before the job finished (DARB_SHUTDOWN_GRACE_SECONDS);"
    " the job was stopped on the agent, which rolls the environment back; submit it again"
)
# After the grace, how long a stopping control plane still waits to record handed-back jobs.
FINISH_ON_SHUTDOWN = 5.0
# A create's agent refused the connection before anything ran: place it again.
REFUSED = Outcome(JobStatus.FAILED, "the executor agent refused the connection")
# What a database outage raises: retried with a one-line warning instead of a traceback.
DATABASE_ERRORS = (SQLAlchemyError, psycopg.Error, OSError)


class Dispatcher:
    """Claims and runs jobs. Each running job ends in exactly one of these ways: the agent's
    result, a cancel request, the agent declared lost (``AgentMonitor``), the job timeout,
    or the control plane's shutdown after its grace."""

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        client: ExecutorClient,
        agents: AgentMonitor,
        *,
        concurrency: int,
        poll_interval: float,
        lease: float,
        job_timeout: float,
        log_limits: ApiLimits,
        metrics: Metrics,
        draining: tuple[str, ...] = (),
    ) -> None:
        self._db = database
        self._bus = bus
        self._client = client
        self._agents = agents
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._lease = timedelta(seconds=lease)
        self._job_timeout = job_timeout
        self._log_limits = log_limits
        self._metrics = metrics
        self._observer = JobObserver(metrics)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rebuilds = Rebuilder(database, bus, client, agents, self.worker_id, draining)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._takeover = Takeover(database, client, agents.lease, self._finish_expired)
        # Jobs whose operation is on an agent: ``concurrency`` bounds these. A job whose
        # operation has ended leaves at once, so the next claim overlaps its bookkeeping
        # (storing the last lines, recording the end) instead of waiting for it.
        self._on_agent: set[str] = set()
        self._cancels: dict[str, asyncio.Event] = {}
        self._progress: dict[str, ProgressRecorder] = {}
        self._loop_task: asyncio.Task[None] | None = None
        bus.on_cancel(self._cancel_requested)

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        # Jobs a stopped control plane left end before the first claim, unless their
        # agent keeps the takeover waiting: then they end in the background.
        taking_over = await self._takeover.sweep(self._running)
        if taking_over:
            await asyncio.wait(taking_over, timeout=FENCE_TIMEOUT)
        self._loop_task = asyncio.create_task(self._loop(), name="darb-dispatcher")

    async def stop_claiming(self) -> None:
        """The first step of a shutdown: no job is claimed after this returns."""
        if self._loop_task is not None:
            await _stop(self._loop_task)
            self._loop_task = None

    async def drain(self, grace: float) -> None:
        """Lets running jobs finish for ``grace`` seconds, then hands back the rest.

        Handing back means: stop the operation on the agent (it kills the process group
        and rolls the environment back to its last good ``pixi.lock``) and record the job
        FAILED with ``SHUTDOWN``. It is not put back to PENDING: its log already holds
        lines of the interrupted attempt, and a create that the agent had committed just
        before the cancel would fail as ``ALREADY_EXISTS`` when run again. Users resubmit.
        """
        await self.stop_claiming()
        tasks = list(self._running.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:  # recording the end needs the database; leases cover it if that is away
                await asyncio.wait(late, timeout=FINISH_ON_SHUTDOWN)

    async def fail_expired(self) -> None:
        """Fails jobs left running by a control plane that stopped renewing their lease.

        Our own running jobs are skipped: after a database outage their lease may have run
        out before the heartbeat could renew it, but they are alive. Each is fenced on its
        agent first, and ended as the agent then has it (``scheduling/takeover.py``), in
        the background.
        """
        await self._takeover.sweep(self._running)

    async def _finish_expired(self, job_id: str, outcome: Outcome) -> None:
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
            except DATABASE_ERRORS as exc:  # the database is away: one line per poll, no trace
                log.warning("claiming jobs failed (%s); retrying", _describe(exc))
            except Exception:
                log.exception("claiming jobs failed; retrying after the poll interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bus.jobs_available.wait(), self._poll_interval)

    async def _claim_all(self) -> None:
        while len(self._on_agent) < self._concurrency:
            claimed = await jobs.claim_next(
                self._db, self.worker_id, self._lease, self._bus.notify_target(JOB_CHANGED_CHANNEL)
            )
            if claimed is None:
                return
            self._cancels[claimed.id] = asyncio.Event()
            task = asyncio.create_task(self._run(claimed), name=f"darb-job-{claimed.id}")
            self._running[claimed.id] = task
            self._on_agent.add(claimed.id)
            task.add_done_callback(functools.partial(self._done, claimed.id))
            self._bus.environment_changed_here(claimed.environment_id)
            self._bus.changed_here(claimed.id)  # other processes heard the claim's NOTIFY

    def _off_agent(self, job_id: str) -> None:
        if job_id in self._on_agent:
            self._on_agent.discard(job_id)
            self._bus.jobs_available.set()

    def _done(self, job_id: str, _task: object = None) -> None:
        self._off_agent(job_id)
        self._running.pop(job_id, None)
        self._cancels.pop(job_id, None)
        self._bus.jobs_available.set()

    def _cancel_requested(self, job_id: str) -> None:
        if job_id in self._cancels:
            self._cancels[job_id].set()

    async def _run(self, job: ClaimedJob) -> None:
        writer = LineWriter(
            self._db, self._bus, job.id, self.worker_id, self._log_limits, self._metrics
        )
        progress = ProgressRecorder(self._db, self._bus, job.id, self.worker_id)
        self._progress[job.id] = progress
        heartbeat = asyncio.create_task(self._heartbeat(job.id, self._cancels[job.id]))
        outcome = Outcome(JobStatus.FAILED, SHUTDOWN)  # kept if ``drain`` cancels this task
        try:
            outcome = await self._supervise(job, writer)
            if outcome.status == JobStatus.COMPLETED:
                outcome = dataclasses.replace(outcome, description=payloads.describe(job.payload))
        except Exception:
            log.exception("job %s failed in the control plane", job.id)
            outcome = Outcome(JobStatus.FAILED, "internal error in the control plane")
        finally:
            self._off_agent(job.id)
            await _stop(heartbeat)
            await writer.close()
            await progress.close()  # a job that ended keeps its last progress
            self._progress.pop(job.id, None)
            await self._finish(
                job.id, outcome, JobStatus.RUNNING, self.worker_id, job.environment_id
            )

    async def _supervise(self, job: ClaimedJob, writer: LineWriter) -> Outcome:
        """Runs the operation on its agent. A create goes to an agent that answered
        recently without probing it first; if that agent refuses the connection before
        anything ran, the create is placed again with a probe (see ``_executor_for``)."""
        executor = await self._executor_for(job, trust_recent=True)
        outcome = await self._supervise_on(job, writer, executor, may_move=True)
        if outcome is REFUSED:
            self._agents.refused(executor)
            executor = await self._executor_for(job, trust_recent=False)
            outcome = await self._supervise_on(job, writer, executor, may_move=False)
        return outcome

    async def _supervise_on(
        self, job: ClaimedJob, writer: LineWriter, executor: str, may_move: bool
    ) -> Outcome:
        """Runs the operation until it ends or something ends it first; leaving this
        function (also by cancellation) always stops the operation on the agent."""
        operation = asyncio.create_task(self._execute(job, executor, writer, may_move))
        enders: dict[asyncio.Task[Any], Outcome] = {
            asyncio.create_task(self._cancels[job.id].wait()): Outcome(
                JobStatus.CANCELLED, CANCELLED_BY_REQUEST
            ),
            asyncio.create_task(self._agents.wait_lost(executor)): Outcome(
                JobStatus.FAILED, agent_lost(executor, self._agents.silence)
            ),
        }
        try:
            self._observer.started(job, executor)  # metrics and log
            done, _ = await asyncio.wait(
                {operation, *enders}, timeout=self._job_timeout, return_when=FIRST_COMPLETED
            )
            if operation in done:
                return operation.result()
            for ender in done:
                return enders[ender]
            return Outcome(JobStatus.FAILED, f"timed out after {self._job_timeout:g} s")
        finally:
            for ender in enders:
                await _stop(ender)
            await _stop(operation)

    async def _executor_for(self, job: ClaimedJob, trust_recent: bool) -> str:
        """The agent that has (or, for a create, will have) the environment."""
        if not isinstance(job.payload, payloads.CreatePayload):
            return await self._rebuilds.executor_for(job)  # see scheduling/rebuilds.py
        executor = await self._agents.choose_for_new_environment(job.executor, trust_recent)
        if executor != job.executor:
            log.info(
                "environment %s goes to %s: %s does not answer",
                *(job.environment_id, executor, job.executor),
            )
            await self._db.run(environments.rebind, job.environment_id, executor)
        return executor

    async def _execute(
        self,
        job: ClaimedJob,
        executor: str,
        writer: LineWriter,
        may_move: bool,
        lock: LockToApply | None = None,
    ) -> Outcome:
        """One operation on the agent. ``ABORTED`` (busy with the environment, e.g. still
        rolling back an operation of a control plane that died) is retried for
        ``RETRY_WINDOW``; ``UNAVAILABLE`` before the agent sent anything is ``REFUSED``
        when ``may_move``, else retried until the agent watchdog in ``_supervise_on``
        declares the agent lost. ``lock``: a rebuild's ApplyLock instead of the job's
        operation. A rebuild or move job, and a job whose environment's files are
        missing on its agent, rebuild it first (``scheduling/rebuilds.py``)."""

        def apply(target: str, lock: LockToApply) -> Any:
            return self._execute(job, target, writer, may_move, lock)

        if lock is None and is_rebuild_job(job):
            return await self._rebuilds.rebuild(job, executor, writer, apply, "")
        if lock is None and self._rebuilds.deletes_elsewhere(job):
            return await self._rebuilds.delete_elsewhere(job, writer)
        rebuilt = False
        if lock is None and self._rebuilds.needs_rebuild_first(job, executor):
            why = f"its agent {job.executor} is not in DARB_EXECUTORS"
            outcome = await self._rebuilds.rebuild(job, executor, writer, apply, why)
            if outcome.status != JobStatus.COMPLETED:
                return outcome
            rebuilt = True
        operation = lock if lock is not None else await self._operation(job)
        deadline = time.monotonic() + RETRY_WINDOW
        delay = 0.2
        while True:
            heard = False
            try:
                events = self._client.run(executor, job.environment_id, operation, job.fence)
                async for event in events:
                    heard = True
                    if isinstance(event, AgentLines):
                        await writer.add(event)  # waits while storing lags behind
                        continue
                    if isinstance(event, Progress):
                        self._progress[job.id].add(event)
                        continue
                    self._agents.heard_from(executor)
                    status = JobStatus.COMPLETED if event.success else JobStatus.FAILED
                    return Outcome(status, "" if event.success else event.error, event.state)
                return Outcome(JobStatus.FAILED, "the executor ended without a result")
            except ExecutorError as exc:
                if exc.code == grpc.StatusCode.UNAVAILABLE and heard:
                    return Outcome(JobStatus.FAILED, agent_lost(executor, exc.message))
                if exc.code == grpc.StatusCode.UNAVAILABLE and may_move:
                    return REFUSED
                waiting = exc.code == grpc.StatusCode.UNAVAILABLE or time.monotonic() < deadline
                if exc.retryable and not heard and waiting:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if lock is None and not heard and not rebuilt and is_missing(job, exc):
                    why = f"agent {executor} does not have the environment"
                    outcome = await self._rebuilds.rebuild(job, executor, writer, apply, why)
                    if outcome.status != JobStatus.COMPLETED:
                        return outcome
                    rebuilt = True
                    continue
                gone = exc.code == grpc.StatusCode.NOT_FOUND
                if gone and isinstance(job.payload, payloads.DeletePayload):
                    return Outcome(JobStatus.COMPLETED, "", AgentState())
                return Outcome(JobStatus.FAILED, f"executor: {exc.message}")

    async def _operation(self, job: ClaimedJob) -> Operation:
        """What the agent is asked to do: the job's payload, or for a rollback the target
        version's lock with its manifest's fields."""
        if not isinstance(job.payload, payloads.RollbackPayload):
            return job.payload
        return await self._db.read(
            versions.lock_to_apply, job.environment_id, job.environment_name, job.payload.version
        )

    async def _heartbeat(self, job_id: str, cancel: asyncio.Event) -> None:
        """Renews the lease (the claim set the first) and notices cancels another
        process flagged in the row, should its NOTIFY have been lost."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                state = await self._db.run(jobs.heartbeat, job_id, self.worker_id, self._lease)
            except DATABASE_ERRORS as exc:  # the database is away; the next beat tries again
                log.warning("heartbeat of job %s failed (%s)", job_id, _describe(exc))
            except Exception:
                log.exception("heartbeat of job %s failed", job_id)
            else:
                if state is None or state:
                    cancel.set()

    async def _finish(
        self,
        job_id: str,
        outcome: Outcome,
        expected: JobStatus,
        worker_id: str | None,
        environment_id: str | None = None,
    ) -> None:
        """Records the end, retrying while the database is away: a job that ran must not
        be left to the lease sweep, which would replace its real outcome."""
        delay = 0.5
        while True:
            try:
                ended = await end_job(self._db, self._bus, job_id, outcome, expected, worker_id)
                break
            except DATABASE_ERRORS as exc:
                log.warning("recording the end of job %s failed (%s)", job_id, _describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._bus.jobs_ended_here([job.id for job in ended], environment_id)
        self._observer.ended(ended)


def agent_lost(executor: str, reason: str) -> str:
    return f"the executor agent {executor} was lost ({reason}); the job did not finish"


def _describe(exc: BaseException) -> str:
    """A one-line reason for a warning; a database outage would otherwise log pages."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


async def _stop(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
