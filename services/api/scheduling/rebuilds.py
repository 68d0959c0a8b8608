"""Agents as caches of PostgreSQL: rebuilding an environment from its current version.

PostgreSQL holds every version's manifest and lock (``environment_versions``). An agent
that lost an environment's files (its directory is gone, or the agent was replaced by
one with an empty disk) answers NOT_FOUND "... does not exist"; one removed from
``DARB_EXECUTORS`` is not asked at all. Either way the environment is rebuilt: its
current version's lock is installed as is (the agent's ``ApplyLock``, no solve), on its
agent or, if that agent is gone, on another answering one, and the binding
(``environments.executor``) moves there. That happens

- inside any job that needs the environment (install, remove, rollback), before the
  job's own operation, in the job's log;
- as a job of its own: ``RebuildEnvironment`` (``JOB_TYPE_REBUILD_ENVIRONMENT``) and
  ``MoveEnvironment``/``DrainAgent``/``DARB_DRAIN`` (``JOB_TYPE_MOVE_ENVIRONMENT``: on a
  chosen agent, after which the old agent's directory is deleted, best effort);
- as rebuild jobs queued at once, in the owners' names, for every environment of an
  agent that answers a probe with a new data directory identity (its disk was emptied
  or replaced: ``rebuilds_on_new_disk``, ``repo/agents.py``), so that none of them
  shows READY until a job happens to reach it.

Meanwhile the environment is REBUILDING. A rebuild adds no version (the content is the
same); it marks the current one (``rebuild_count``, ``rebuilt_at``) and says so in the
job's log. Rebuilds and moves are jobs in the environment's queue (or part of one), so
the environment's other jobs wait for them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.database.db import Database
from services.api.events import JOBS_CHANNEL, EventBus
from services.api.joblog.writer import LineWriter
from services.api.records import AgentState, ClaimedJob, LockToApply, Outcome
from services.api.repo import rebuilds
from services.api.repo.agents import new_disk_reason, record_identity
from services.api.repo.models import EnvironmentStatus, Job, JobStatus, utcnow
from services.api.scheduling.agents import AgentMonitor, IdentityHandler
from services.api.scheduling.executor_client import (
    AgentLines,
    AgentResult,
    ExecutorClient,
    ExecutorError,
)
from shared.errors import ServiceError

log = logging.getLogger(__name__)

# How long freeing a moved environment's old directory may take before it is left.
FREE_TIMEOUT = 120.0
# Jobs that need the environment's files: a missing environment is rebuilt for them.
NEEDS_FILES = (payloads.InstallPayload, payloads.RemovePayload, payloads.RollbackPayload)
JOB_PAYLOADS = (payloads.RebuildPayload, payloads.MovePayload)

# Runs an operation of the job on an agent, as the dispatcher does (lines to the job's
# log, retries): (executor, lock) -> the outcome.
Apply = Callable[[str, LockToApply], Awaitable[Outcome]]


def rebuilds_on_new_disk(database: Database, bus: EventBus) -> IdentityHandler:
    """The AgentMonitor's handler of an agent's data directory identity: a new one
    queues the rebuilds of the environments bound to that agent (``record_identity``)
    and wakes the dispatchers."""

    async def identified(address: str, data_id: str) -> None:
        def record(session: Session) -> list[Job]:
            queued = record_identity(session, address, data_id)
            if queued:
                bus.notify_in(session, JOBS_CHANNEL)
            return queued

        queued = await database.run(record)
        if not queued:
            return
        for job in queued:
            bus.environment_changed_here(job.environment_id)  # now REBUILDING
        bus.jobs_available.set()
        reason = new_disk_reason(address)
        log.warning("%s: queued the rebuild of %d environments", reason, len(queued))

    return identified


def is_missing(job: ClaimedJob, exc: ExecutorError) -> bool:
    """The agent does not have the environment (not: a package is not a dependency) and
    the job needs its files."""
    missing = exc.code == grpc.StatusCode.NOT_FOUND and exc.message.endswith("does not exist")
    return missing and rebuilds_when_missing(job)


def is_rebuild_job(job: ClaimedJob) -> bool:
    return isinstance(job.payload, JOB_PAYLOADS)


def rebuilds_when_missing(job: ClaimedJob) -> bool:
    return isinstance(job.payload, NEEDS_FILES)


class Rebuilder:
    """Where a job on an existing environment runs, and the rebuild itself."""

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        client: ExecutorClient,
        agents: AgentMonitor,
        worker_id: str,
        draining: tuple[str, ...] = (),
    ) -> None:
        self._db = database
        self._bus = bus
        self._client = client
        self._agents = agents
        self._worker_id = worker_id
        self._draining = draining

    def _gone(self, executor: str) -> bool:
        return executor not in self._agents.configured

    async def executor_for(self, job: ClaimedJob) -> str:
        """A move's target; else the environment's agent, unless that agent is no
        longer configured (or, for a rebuild, does not answer): then another answering
        one, where the environment is rebuilt first (``needs_rebuild_first``). A delete
        stays with its agent."""
        bound = job.executor
        if isinstance(job.payload, payloads.MovePayload):
            return job.payload.agent
        if isinstance(job.payload, (payloads.DeletePayload, payloads.CreatePayload)):
            return bound
        if isinstance(job.payload, payloads.RebuildPayload):
            if not self._gone(bound) and await self._agents.answers(bound):
                return bound
        elif not self._gone(bound):
            return bound
        other = await self._agents.choose_other({bound, *self._draining})
        if other is None:
            other = await self._agents.choose_other({bound})
        return other or bound

    def deletes_elsewhere(self, job: ClaimedJob) -> bool:
        """A delete of an environment whose agent left ``DARB_EXECUTORS``."""
        return isinstance(job.payload, payloads.DeletePayload) and self._gone(job.executor)

    async def delete_elsewhere(self, job: ClaimedJob, writer: LineWriter) -> Outcome:
        """Such a delete completes without that agent: it is asked to free the directory,
        best effort, within half the agent lease (the job's log says how it went)."""
        await self._line(writer, f"its agent {job.executor} is not in DARB_EXECUTORS")
        await self._free(job, job.executor, writer, min(FREE_TIMEOUT, self._agents.lease / 2))
        return Outcome(JobStatus.COMPLETED, "", AgentState())

    def needs_rebuild_first(self, job: ClaimedJob, executor: str) -> bool:
        """A job that needs the files runs on another agent than the one they are on."""
        return rebuilds_when_missing(job) and executor != job.executor

    async def _line(self, writer: LineWriter, text: str, stream: str = "stdout") -> None:
        await writer.add(AgentLines([(stream, utcnow(), f"darb: {text}")]))

    async def rebuild(
        self, job: ClaimedJob, executor: str, writer: LineWriter, apply: Apply, why: str
    ) -> Outcome:
        """Rebuilds the environment on ``executor`` from its current version, binds it
        there and marks the version rebuilt. A move then frees the old directory.
        Returns the outcome of the ApplyLock (itself when it failed), with no state
        when it completed: a rebuild adds no version."""
        if isinstance(job.payload, payloads.RebuildPayload) and not why:
            why = job.payload.reason  # queued by darb itself: says why
        if isinstance(job.payload, payloads.MovePayload):  # still where it was if this fails
            known_missing = self._gone(job.executor)
        else:
            known_missing = bool(why) or self._gone(job.executor) or executor != job.executor
        try:
            lock, before, number = await self._db.run(rebuilds.begin, job.environment_id)
        except ServiceError as exc:  # e.g. no version to rebuild from
            return Outcome(JobStatus.FAILED, f"cannot rebuild: {exc}")
        finally:
            self._bus.environment_changed_here(job.environment_id)
        await self._line(
            writer,
            f"{why + '; ' if why else ''}rebuilding environment {job.environment_name!r} on"
            f" agent {executor} from version {number}'s lock (installed as is, no solve)",
        )
        outcome = await apply(executor, lock)
        if outcome.status != JobStatus.COMPLETED:
            status = EnvironmentStatus.REBUILDING if known_missing else before
            error = f"rebuild failed: {outcome.error}; the next job or RebuildEnvironment retries"
            await self._db.run(
                rebuilds.failed, job.id, self._worker_id, job.environment_id, status, error
            )
            self._bus.environment_changed_here(job.environment_id)
            return outcome
        old = await self._db.run(
            rebuilds.completed,
            *(job.id, self._worker_id, job.environment_id, executor, number),
        )
        self._bus.environment_changed_here(job.environment_id)
        if old is None:
            return Outcome(JobStatus.FAILED, "the job ended elsewhere during the rebuild")
        moved = f" (moved from agent {old})" if old != executor else ""
        await self._line(
            writer, f"rebuilt version {number} on agent {executor}{moved}: same packages"
        )
        log.info(
            "environment %s rebuilt from version %d on %s%s",
            *(job.environment_id, number, executor, moved),
        )
        if isinstance(job.payload, payloads.MovePayload) and old != executor:
            await self._free(job, old, writer)
        return Outcome(JobStatus.COMPLETED, "", None, "rebuilt")

    async def _free(
        self, job: ClaimedJob, old: str, writer: LineWriter, timeout: float = FREE_TIMEOUT
    ) -> None:
        """Deletes the environment's directory on its old agent, best effort."""
        try:
            async with asyncio.timeout(timeout):
                result = await self._delete(old, job.environment_id, job.fence)
        except (ExecutorError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, ExecutorError) else "timed out"
            if isinstance(exc, ExecutorError) and exc.code == grpc.StatusCode.NOT_FOUND:
                result = AgentResult(True, "", AgentState())
            else:
                result = AgentResult(False, reason, AgentState())
        if result.success:
            await self._line(writer, f"freed its directory on agent {old}")
            return
        text = f"could not free its directory on agent {old} ({result.error}); delete it there"
        await self._line(writer, text, "stderr")
        log.warning("environment %s: %s", job.environment_id, text)

    async def _delete(self, executor: str, environment_id: str, fence: int) -> AgentResult:
        """The delete on the old agent, with this job's claim's fencing token (the agent
        refuses a lower one than it has seen for the environment)."""
        delete = payloads.DeletePayload()
        async for event in self._client.run(executor, environment_id, delete, fence):
            if isinstance(event, AgentResult):
                return event
        return AgentResult(False, "the agent ended without a result", AgentState())
