"""How a job's end changes its environment, written in the transaction that ends the job.

On PostgreSQL the end is one call of ``darb_finish_job`` (migration 0007), which also
sends the NOTIFYs; SQLite runs ``finish`` from Python. ``tests/api/test_job_end.py``
runs every kind of end through both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.models import Environment, EnvironmentStatus, Job, JobStatus, JobType, utcnow
from services.api.repo import environments, finishes
from services.api.repo.environments import PackageRow

if TYPE_CHECKING:
    from services.api.db import Database
    from services.api.events import EventBus


@dataclass(frozen=True)
class AgentState:
    """The environment as the agent reported it after an operation."""

    packages: list[PackageRow] = field(default_factory=list)
    manifest: str = ""
    lockfile: str = ""


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    error: str = ""
    # None when the agent did not report the environment (it is then left as stored).
    state: AgentState | None = None


@dataclass(frozen=True)
class EndedJob:
    """A job as its end left it: what its watchers, metrics and log line need."""

    id: str
    environment_id: str
    type: str
    status: str
    error: str
    agent: str
    started_at: datetime | None
    completed_at: datetime | None


async def end_job(
    database: Database,
    bus: EventBus,
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None = None,
) -> list[EndedJob]:
    """``finish`` in a transaction of its own, whose commit also tells the other processes
    (NOTIFY). The caller tells this process (``bus.jobs_ended_here``)."""
    if not database.is_postgres:  # SQLite: one process, nobody to NOTIFY
        return await database.run(finish, job_id, outcome, expected, worker_id)
    values = finishes.params(job_id, outcome, expected, worker_id, utcnow(), bus)
    return [EndedJob(*row) for row in await database.fetch_all(finishes.FINISH_JOB, **values)]


def finish(
    session: Session,
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None = None,
) -> list[EndedJob]:
    """Ends a job if it is still ``expected`` (and, given ``worker_id``, still ours).

    Returns every job that ended: this one and, after a failed create, those queued
    behind it.
    """
    query = select(Job).where(Job.id == job_id).with_for_update()
    job = session.scalars(query).one()
    if job.status != expected or (worker_id is not None and job.claimed_by != worker_id):
        return []
    now = utcnow()
    job.status = outcome.status
    job.error = outcome.error
    job.completed_at = now
    job.lease_expires_at = None
    environment = session.get_one(Environment, job.environment_id, with_for_update=True)
    environment.updated_at = now
    ended = [job]
    payload = payloads.load(job.type, job.payload)
    succeeded = outcome.status == JobStatus.COMPLETED
    if outcome.state is not None and job.type != JobType.DELETE_ENVIRONMENT:
        environment.manifest = outcome.state.manifest
        environment.lockfile = outcome.state.lockfile
        environments.replace_packages(session, environment.id, outcome.state.packages)
    deleting = environment.status == EnvironmentStatus.DELETING
    if isinstance(payload, payloads.CreatePayload):
        if not succeeded:
            environment.error = outcome.error or "creation did not complete"
            reason = f"not run: creating environment {environment.name!r} failed"
            ended += _fail_queued(session, environment.id, reason, now)
        if not deleting:  # a queued delete keeps the environment DELETING
            environment.status = EnvironmentStatus.READY if succeeded else EnvironmentStatus.FAILED
    elif isinstance(payload, payloads.DeletePayload):
        if succeeded:
            environment.deleted_at = now
            environments.replace_packages(session, environment.id, [])
        else:
            environment.status = _status_after_create(session, environment.id)
    return [
        EndedJob(
            *(ended_job.id, ended_job.environment_id, ended_job.type, ended_job.status),
            *(ended_job.error, environment.executor, ended_job.started_at, ended_job.completed_at),
        )
        for ended_job in ended
    ]


def _status_after_create(session: Session, environment_id: str) -> EnvironmentStatus:
    """The status an environment returns to when its delete does not happen."""
    query = select(Job.status).where(
        Job.environment_id == environment_id, Job.type == JobType.CREATE_ENVIRONMENT
    )
    return {
        JobStatus.PENDING: EnvironmentStatus.PENDING,
        JobStatus.RUNNING: EnvironmentStatus.CREATING,
        JobStatus.COMPLETED: EnvironmentStatus.READY,
    }.get(JobStatus(session.scalars(query).one()), EnvironmentStatus.FAILED)


def _fail_queued(session: Session, environment_id: str, reason: str, now: datetime) -> list[Job]:
    """Fails the jobs queued behind a failed create; a delete may still run."""
    queued = select(Job).where(
        Job.environment_id == environment_id,
        Job.status == JobStatus.PENDING,
        Job.type != JobType.DELETE_ENVIRONMENT,
    )
    failed = list(session.scalars(queued.order_by(Job.seq)))
    for job in failed:
        job.status, job.error, job.completed_at = JobStatus.FAILED, reason, now
    return failed
