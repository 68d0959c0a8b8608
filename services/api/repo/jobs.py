"""The job queue: submit, claim, heartbeat, cancel, and the job's log lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, select, update
from sqlalchemy.orm import Session, aliased

from services.api import payloads
from services.api.errors import FailedPrecondition, NotFound
from services.api.ids import new_id
from services.api.models import (
    ACTIVE_JOB_STATUSES,
    Environment,
    EnvironmentStatus,
    Job,
    JobLogLine,
    JobStatus,
    User,
    utcnow,
)


@dataclass(frozen=True)
class LineRow:
    seq: int
    stream: str
    time: datetime
    text: str


@dataclass(frozen=True)
class ClaimedJob:
    """What a dispatcher needs to run a job, read in the claiming transaction."""

    id: str
    type: str
    environment_id: str
    environment_name: str
    executor: str
    payload: payloads.Payload


def submit(session: Session, environment: Environment, payload: payloads.Payload) -> Job:
    job = Job(
        id=new_id(),
        environment_id=environment.id,
        owner_id=environment.owner_id,
        type=payloads.job_type_of(payload),
        status=JobStatus.PENDING,
        payload=payloads.dump(payload),
        error="",
        cancel_requested=False,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def lock_for_claim(query: Select[tuple[Job]], dialect: str) -> Select[tuple[Job]]:
    """The one place where the claim differs by database.

    PostgreSQL: concurrent dispatchers skip rows another one has locked. SQLite has no
    row locks; every transaction there starts with ``BEGIN IMMEDIATE`` (see db.py), which
    holds the database's single write lock from the claim's read to its commit.
    """
    if dialect == "postgresql":
        return query.with_for_update(skip_locked=True, of=Job)
    return query


def claim_query(dialect: str) -> Select[tuple[Job]]:
    """The oldest pending job that is first in its environment's queue."""
    earlier = aliased(Job)
    blocked = exists().where(
        earlier.environment_id == Job.environment_id,
        earlier.seq < Job.seq,
        earlier.status.in_(ACTIVE_JOB_STATUSES),
    )
    query = select(Job).where(Job.status == JobStatus.PENDING, ~blocked)
    return lock_for_claim(query.order_by(Job.seq).limit(1), dialect)


def claim_next(session: Session, worker_id: str, lease: timedelta) -> ClaimedJob | None:
    job = session.scalars(claim_query(session.get_bind().dialect.name)).first()
    if job is None:
        return None
    now = utcnow()
    job.status = JobStatus.RUNNING
    job.claimed_by = worker_id
    job.started_at = now
    job.lease_expires_at = now + lease
    environment = session.get_one(Environment, job.environment_id, with_for_update=True)
    payload = payloads.load(job.type, job.payload)
    if environment.status == EnvironmentStatus.PENDING:
        environment.status = EnvironmentStatus.CREATING
        environment.updated_at = now
    return ClaimedJob(
        id=job.id,
        type=job.type,
        environment_id=environment.id,
        environment_name=environment.name,
        executor=environment.executor,
        payload=payload,
    )


def heartbeat(session: Session, job_id: str, worker_id: str, lease: timedelta) -> bool | None:
    """Extends the lease; returns whether a cancel was requested, None if no longer ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == worker_id, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + lease)
        .returning(Job.cancel_requested)
    ).first()
    return None if result is None else bool(result[0])


def get(session: Session, job_id: str) -> Job:
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def get_visible(session: Session, caller: User, job_id: str) -> Job:
    """A job of the caller's (any, for admins); NotFound otherwise."""
    query = select(Job).where(Job.id == job_id)
    if not caller.is_admin:
        query = query.where(Job.owner_id == caller.id)
    job = session.scalars(query).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def page(
    session: Session, caller: User, environment_id: str | None, before_seq: int | None, limit: int
) -> list[Job]:
    """Jobs newest first, below ``before_seq`` when given."""
    query = select(Job)
    if not caller.is_admin:
        query = query.where(Job.owner_id == caller.id)
    if environment_id is not None:
        query = query.where(Job.environment_id == environment_id)
    if before_seq is not None:
        query = query.where(Job.seq < before_seq)
    return list(session.scalars(query.order_by(Job.seq.desc()).limit(limit)))


def request_cancel(session: Session, job: Job) -> None:
    """Flags a running job; the dispatcher running it stops it. Pending jobs are ended
    by ``outcomes.finish`` instead, so that their environment is updated with them."""
    if JobStatus(job.status).terminal:
        raise FailedPrecondition(f"job {job.id} has already ended ({job.status})")
    job.cancel_requested = True


def expired(session: Session, now: datetime) -> list[str]:
    """Running jobs whose dispatcher stopped renewing the lease."""
    query = select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    return list(session.scalars(query))


def append_lines(session: Session, job_id: str, lines: list[LineRow]) -> None:
    session.add_all(
        JobLogLine(job_id=job_id, seq=line.seq, stream=line.stream, time=line.time, text=line.text)
        for line in lines
    )


def lines_after(session: Session, job_id: str, after_seq: int) -> list[LineRow]:
    query = (
        select(JobLogLine)
        .where(JobLogLine.job_id == job_id, JobLogLine.seq > after_seq)
        .order_by(JobLogLine.seq)
    )
    return [LineRow(row.seq, row.stream, row.time, row.text) for row in session.scalars(query)]


def log_text(session: Session, job_id: str) -> str:
    return "\n".join(line.text for line in lines_after(session, job_id, 0))
