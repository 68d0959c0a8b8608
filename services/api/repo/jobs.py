"""The job queue: submit, claim, heartbeat, cancel, and the job's log lines."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ScalarSelect,
    Select,
    Update,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from services.api import payloads
from services.api.database.direct import Query
from services.api.ids import new_id
from services.api.records import ClaimedJob
from services.api.repo import access, environments, fences, quotas
from services.api.repo.models import (
    ACTIVE_JOB_STATUSES,
    Environment,
    EnvironmentStatus,
    Job,
    JobStatus,
    Role,
    User,
    is_active,
)
from shared.config import ApiLimits
from shared.errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from services.api.database.db import Database


# The columns a new job is given; the others have defaults or are set later.
_NEW_COLUMNS = (
    *("id", "environment_id", "owner_id", "created_by", "type", "status", "payload"),
    *("error", "cancel_requested"),
)


def new(environment_id: str, owner_id: str, payload: payloads.Payload, created_by: str = "") -> Job:
    """A PENDING job not yet stored (``submit``, or ``darb_create_environment`` for a
    create, inserts it and stamps its ``created_at``)."""
    return Job(
        id=new_id(),
        environment_id=environment_id,
        owner_id=owner_id,
        created_by=created_by or owner_id,
        type=payloads.job_type_of(payload),
        status=JobStatus.PENDING,
        payload=payloads.dump(payload),
        error="",
        cancel_requested=False,
    )


def submit(
    session: Session, environment: Environment, payload: payloads.Payload, created_by: str
) -> Job:
    """Inserts a new job with one Core INSERT (the ORM's unit of work would cost several
    times as much), stamped with the database's clock."""
    job = new(environment.id, environment.owner_id, payload, created_by)
    values = {name: getattr(job, name) for name in _NEW_COLUMNS}
    statement = insert(Job).values(**values, created_at=func.now()).returning(Job.created_at)
    job.created_at = session.execute(statement).scalar_one()
    return job


def queue(
    session: Session,
    caller: User,
    environment_id: str,
    payload: payloads.Payload,
    limits: ApiLimits,
) -> Job:
    """Queues a job behind the environment's others, if the environment still takes jobs
    and the caller may change it (an editor; the owner role for a delete). The job and
    its quota count are the environment owner's, whoever submits it.

    A delete is outside the active-jobs quota: there is at most one per environment, and a
    user at the limit must still be able to clean up.
    """
    need = Role.OWNER if isinstance(payload, payloads.DeletePayload) else Role.EDITOR
    environment = environments.get_visible(session, caller, environment_id, need, for_update=True)
    if environment.status == EnvironmentStatus.DELETING:
        raise FailedPrecondition(f"environment {environment.name!r} is being deleted")
    if isinstance(payload, payloads.DeletePayload):
        environment.status = EnvironmentStatus.DELETING
    elif environment.status == EnvironmentStatus.FAILED:
        raise FailedPrecondition(
            f"environment {environment.name!r} failed to create ({environment.error}); "
            "delete it and create it again"
        )
    else:
        quotas.lock_owner(session, environment.owner_id)
        quotas.check_active_jobs(session, environment.owner_id, limits.max_active_jobs_per_user)
    return submit(session, environment, payload, caller.id)


def _claimable() -> ScalarSelect[int]:
    """The seq of the oldest pending job that is first in its environment's queue.
    Concurrent dispatchers skip rows another one has locked.
    """
    earlier = aliased(Job)
    blocked = exists().where(
        earlier.environment_id == Job.environment_id,
        earlier.seq < Job.seq,
        is_active(earlier.status),
    )
    query = select(Job.seq).where(Job.status == JobStatus.PENDING, ~blocked)
    query = query.order_by(Job.seq).limit(1).with_for_update(skip_locked=True, of=Job)
    return query.scalar_subquery()


def _claim() -> Update:
    """Marks the job of ``_claimable`` RUNNING under a lease; parameters: worker,
    lease (seconds)."""
    return (
        update(Job)
        .where(Job.seq == _claimable())
        .values(
            status=JobStatus.RUNNING,
            claimed_by=bindparam("worker"),
            started_at=func.now(),
            lease_expires_at=_lease_until(),
        )
        .returning(
            *(Job.id, Job.type, Job.payload, Job.environment_id),
            *(Job.created_at, Job.started_at),
        )
    )


def _lease_until() -> Any:
    """The database's clock plus the ``lease`` parameter's seconds."""
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("lease"))


def _start_environment(environment_id: Any) -> Update:
    """A PENDING environment's first job is its create: it is CREATING from now on."""
    pending = Environment.status == EnvironmentStatus.PENDING
    return (
        update(Environment)
        .where(Environment.id == environment_id)
        .values(
            status=case((pending, EnvironmentStatus.CREATING), else_=Environment.status),
            updated_at=case((pending, func.now()), else_=Environment.updated_at),
        )
        .returning(Environment.id, Environment.name, Environment.executor)
    )


def _claim_in_one_statement() -> Select[Any]:
    """The claim, the environment's update and the NOTIFY (parameters channel, origin)
    as one statement, so one round trip with no BEGIN or COMMIT. The claim takes a new
    fencing token (``fences.next_token``), which the job's operation carries to the agent."""
    claimed = _claim().cte("claimed")
    started = _start_environment(claimed.c.environment_id).cte("started")
    notify = func.pg_notify(bindparam("channel"), bindparam("origin") + claimed.c.id)
    return select(
        *(claimed.c.id, claimed.c.type, claimed.c.payload, claimed.c.environment_id),
        *(claimed.c.created_at, claimed.c.started_at, started.c.name, started.c.executor),
        fences.next_token().label("fence"),
        notify,
    ).join_from(claimed, started, started.c.id == claimed.c.environment_id)


CLAIM = Query(_claim_in_one_statement())


async def claim_next(
    database: Database, worker_id: str, lease: timedelta, notify: tuple[str, str]
) -> ClaimedJob | None:
    """Marks the next claimable job RUNNING under ``worker_id``'s lease and sends NOTIFY
    on ``notify`` = (channel, payload prefix) with its id."""
    channel, origin = notify
    job = await database.fetch_one(
        CLAIM, worker=worker_id, lease=lease.total_seconds(), channel=channel, origin=origin
    )
    if job is None:
        return None
    return ClaimedJob(
        id=job.id,
        type=job.type,
        environment_id=job.environment_id,
        environment_name=job.name,
        executor=job.executor,
        payload=payloads.load(job.type, job.payload),
        queued_seconds=max((job.started_at - job.created_at).total_seconds(), 0.0),
        fence=job.fence,
    )


def heartbeat(session: Session, job_id: str, worker_id: str, lease: timedelta) -> bool | None:
    """Extends the lease; returns whether a cancel was requested, None if no longer ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == worker_id, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=func.now() + lease)
        .returning(Job.cancel_requested)
    ).first()
    return None if result is None else bool(result[0])


def get(session: Session, job_id: str) -> Job:
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def get_visible(session: Session, caller: User, job_id: str, need: Role = Role.VIEWER) -> Job:
    """A job of an environment on which the caller holds at least ``need``; NotFound
    for one the caller may not see at all."""
    query = select(Job, access.role_of(Job.environment_id, caller.id)).where(Job.id == job_id)
    row = session.execute(query).one_or_none()
    role = None if row is None else access.caller_role(caller, row[1])
    if row is None or role is None:
        raise NotFound(f"job {job_id} not found")
    access.require(role, need, row[0].environment_id)
    return row[0]


def page(
    session: Session, caller: User, environment_id: str | None, before_seq: int | None, limit: int
) -> list[Job]:
    """Jobs newest first, below ``before_seq`` when given: of one environment (whose
    access the caller checked), or of every environment the caller may view."""
    query = select(Job)
    if environment_id is not None:
        query = query.where(Job.environment_id == environment_id)
    elif not caller.is_admin:
        visible = access.visible(caller.id).subquery()
        query = query.join(visible, visible.c.environment_id == Job.environment_id)
    if before_seq is not None:
        query = query.where(Job.seq < before_seq)
    return list(session.scalars(query.order_by(Job.seq.desc()).limit(limit)))


def request_cancel(job: Job) -> None:
    """Flags a running job; the dispatcher running it stops it. Pending jobs are ended
    by ``finishes.end_job`` instead, so that their environment is updated with them."""
    if JobStatus(job.status).terminal:
        raise FailedPrecondition(f"job {job.id} has already ended ({job.status})")
    job.cancel_requested = True


def active_counts(session: Session) -> dict[tuple[str, str], int]:
    """Pending and running jobs by (type, status), for the metrics."""
    query = (
        select(Job.type, Job.status, func.count())
        .where(Job.status.in_(ACTIVE_JOB_STATUSES))
        .group_by(Job.type, Job.status)
    )
    return {(job_type, status): count for job_type, status, count in session.execute(query)}
