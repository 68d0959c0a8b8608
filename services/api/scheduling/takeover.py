"""Taking over a job whose control plane stopped renewing its lease, with fencing.

A control plane that stalled (SIGSTOP, swap, a long pause) can still have its operation
running on the agent. Were the job simply recorded FAILED, that operation could commit
afterwards, and the database would describe an environment the disk no longer has. So
the control plane that takes over:

1. takes a new fencing token (``repo/fences.py``: one database sequence, from which
   every claim takes its token too), larger than the stalled claim's;
2. tells the agent (``Fence``): the agent records the token durably, stops the older
   operation and waits for its rollback. From then on no operation with a lower token
   commits on that agent: every operation checks its token again, under the fence lock,
   at its commit point (``services/executor/fencing.py``). Fence answers with the
   environment's state as it is then;
3. records the job's end from that state: the operation had committed before the fence
   (the files differ from the row's, or a create's environment exists, or a delete's is
   gone) -> COMPLETED with that state; otherwise FAILED ``LEASE_EXPIRED`` with the
   packages the agent reports. Either way the database says what the disk has.

An agent that cannot be reached is fenced again at every sweep (``DARB_POLL_INTERVAL``)
while the job stays RUNNING, for up to ``DARB_AGENT_LEASE_SECONDS`` past the job's
lease. Then the job is FAILED with a reason naming the agent, and the environment's
stored packages are left as they were: the next job of the environment carries a higher
token than the stalled operation, which the agent records before that job changes
anything (an older operation still running there is refused at its commit point), and
that job's result stores what the disk has.

Each takeover runs in a task of its own (``Takeover.sweep``), so that an agent that does
not answer holds up neither the claims of other jobs nor the other takeovers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Container

import grpc

from services.api import payloads
from services.api.database.db import Database
from services.api.records import AgentState, Outcome
from services.api.repo import fences
from services.api.repo.fences import ExpiredJob
from services.api.repo.models import JobStatus, JobType
from services.api.scheduling.executor_client import ExecutorClient, ExecutorError, FencedState

log = logging.getLogger(__name__)

LEASE_EXPIRED = "the control plane running this job stopped (its lease expired)"
# Records a job's end (the dispatcher's ``_finish``, expecting it RUNNING).
Finish = Callable[[str, Outcome], Awaitable[None]]
# How long one sweep waits for an agent's Fence (it waits for a rollback); a slower one
# is fenced again at the next sweep.
FENCE_TIMEOUT = 15.0


def unfenced(executor: str, reason: str) -> str:
    return (
        f"{LEASE_EXPIRED}; its agent {executor} could not be reached to stop the operation"
        f" ({reason}): the environment's packages are stored as before the job until its"
        " next job reads them from the agent"
    )


def outcome_after_fence(job: ExpiredJob, fenced: FencedState) -> Outcome:
    """The job's end from what the agent has once the fence holds."""
    state = fenced.state if fenced.exists else None
    if job.type == JobType.DELETE_ENVIRONMENT:
        if not fenced.exists:
            return Outcome(JobStatus.COMPLETED, "", AgentState())
        return Outcome(JobStatus.FAILED, LEASE_EXPIRED, state)
    if job.type == JobType.CREATE_ENVIRONMENT:
        committed = fenced.exists
    else:
        files = (fenced.state.manifest, fenced.state.lockfile)
        committed = fenced.exists and files != (job.manifest, job.lockfile)
    if committed:
        return Outcome(JobStatus.COMPLETED, "", state, payloads.describe(job.payload))
    return Outcome(JobStatus.FAILED, LEASE_EXPIRED, state)


class Takeover:
    """Finds expired jobs and ends each once its agent is fenced (see the module)."""

    def __init__(
        self, database: Database, client: ExecutorClient, agent_lease: float, finish: Finish
    ) -> None:
        self._db = database
        self._client = client
        self._agent_lease = agent_lease
        self._finish = finish
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def sweep(self, skip: Container[str]) -> list[asyncio.Task[None]]:
        """Starts taking over every expired job not in ``skip`` (jobs this process runs)
        nor already being taken over, each in a task of its own: a Fence waits for the
        agent (up to ``FENCE_TIMEOUT``), and an agent that does not answer must not hold
        up the claims of every other job. Returns the tasks started."""
        started = []
        for job in await self._db.run(fences.expired):
            if job.id in skip or job.id in self._tasks:
                continue
            task = asyncio.create_task(self._end(job), name=f"darb-takeover-{job.id}")
            self._tasks[job.id] = task
            task.add_done_callback(functools.partial(self._forget, job.id))
            started.append(task)
        return started

    def _forget(self, job_id: str, _task: object) -> None:
        self._tasks.pop(job_id, None)

    async def _end(self, job: ExpiredJob) -> None:
        try:
            outcome = await self._take_over(job)
        except Exception as exc:  # the database is away, say: the next sweep tries again
            log.warning("taking over job %s failed (%s); trying again", job.id, exc)
            return
        if outcome is not None:
            await self._finish(job.id, outcome)

    async def _take_over(self, job: ExpiredJob) -> Outcome | None:
        started = asyncio.get_running_loop().time()
        token = await self._db.run(fences.takeover_token, job.id)
        if token is None:
            return None  # it ended, or its control plane came back and renewed the lease
        try:
            fenced = await self._client.fence(
                job.executor, job.environment_id, token, FENCE_TIMEOUT
            )
        except ExecutorError as exc:
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
                return None  # another control plane's takeover fenced it higher: theirs
            waited = asyncio.get_running_loop().time() - started
            if job.overdue_seconds + waited <= self._agent_lease:
                log.warning(
                    "job %s: fencing environment %s on %s failed (%s: %s); trying again",
                    *(job.id, job.environment_id, job.executor, exc.code.name, exc.message),
                )
                return None
            return Outcome(JobStatus.FAILED, unfenced(job.executor, exc.message))
        outcome = outcome_after_fence(job, fenced)
        log.info(
            "job %s taken over (lease expired): fenced environment %s at token %d on %s;"
            " recorded %s",
            *(job.id, job.environment_id, token, job.executor, outcome.status),
        )
        return outcome
