"""How a job's end changes its environment, written in the transaction that ends the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.events import JOB_CHANGED_CHANNEL, JOBS_CHANNEL
from services.api.models import Environment, EnvironmentStatus, Job, JobStatus, JobType, utcnow
from services.api.repo import environments
from services.api.repo.environments import PackageRow

if TYPE_CHECKING:
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


def finish(
    session: Session,
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None = None,
) -> list[str]:
    """Ends a job if it is still ``expected`` (and, given ``worker_id``, still ours).

    Returns the ids of every job that ended, so the caller can tell their watchers.
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
    ended = [job.id]
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
            ended += _fail_queued(session, environment.id, reason)
        if not deleting:  # a queued delete keeps the environment DELETING
            environment.status = EnvironmentStatus.READY if succeeded else EnvironmentStatus.FAILED
    elif isinstance(payload, payloads.DeletePayload):
        if succeeded:
            environment.deleted_at = now
            environments.replace_packages(session, environment.id, [])
        else:
            environment.status = _status_after_create(session, environment.id)
    return ended


def finish_and_announce(
    session: Session,
    bus: EventBus,
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None = None,
) -> list[str]:
    """``finish``, with the NOTIFYs for other processes sent by its commit; after the
    commit, ``bus.jobs_ended_here`` tells this process."""
    ended = finish(session, job_id, outcome, expected, worker_id)
    for ended_id in ended:
        bus.notify_in(session, JOB_CHANGED_CHANNEL, ended_id)
    if ended:
        bus.notify_in(session, JOBS_CHANNEL)
    return ended


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


def _fail_queued(session: Session, environment_id: str, reason: str) -> list[str]:
    """Fails the jobs queued behind a failed create; a delete may still run."""
    return list(
        session.scalars(
            update(Job)
            .where(
                Job.environment_id == environment_id,
                Job.status == JobStatus.PENDING,
                Job.type != JobType.DELETE_ENVIRONMENT,
            )
            .values(status=JobStatus.FAILED, error=reason, completed_at=utcnow())
            .returning(Job.id)
        )
    )
