"""Rebuilds and moves in the database: the environment's status while its files are
rebuilt from its current version, the binding to the agent that holds them, the
version's "rebuilt" mark, and the move jobs of a drain (``scheduling/rebuilds.py``)."""

from __future__ import annotations

from sqlalchemy import Exists, SQLColumnExpression, exists, func, select, update
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.records import LockToApply
from services.api.repo import jobs, versions
from services.api.repo.models import (
    Environment,
    EnvironmentStatus,
    EnvironmentVersion,
    Job,
    JobStatus,
    JobType,
    User,
    is_active,
)
from shared.errors import FailedPrecondition, NotFound


def begin(session: Session, environment_id: str) -> tuple[LockToApply, str, int]:
    """Marks the environment REBUILDING (a queued delete keeps it DELETING) and returns
    its current version's lock to apply, its status before and that version's number."""
    environment = session.get(Environment, environment_id, with_for_update=True)
    if environment is None or environment.deleted_at is not None:
        raise NotFound(f"environment {environment_id} not found")
    number = environment.current_version
    if not number:
        raise FailedPrecondition(
            f"environment {environment.name!r} has no version to rebuild from"
            f" (it is {environment.status})"
        )
    before = environment.status
    if before != EnvironmentStatus.DELETING:
        environment.status = EnvironmentStatus.REBUILDING
        environment.updated_at = func.now()
    lock = versions.lock_to_apply(session, environment_id, environment.name, number)
    return lock, before, number


def _still_ours(session: Session, job_id: str, worker_id: str) -> bool:
    query = select(Job.id).where(
        Job.id == job_id, Job.claimed_by == worker_id, Job.status == JobStatus.RUNNING
    )
    return session.scalars(query.with_for_update()).first() is not None


def completed(
    session: Session, job_id: str, worker_id: str, environment_id: str, executor: str, number: int
) -> str | None:
    """After the lock was applied on ``executor``: binds the environment there, READY
    again (DELETING stays), and marks version ``number`` rebuilt. Only while the job is
    still this worker's; returns the agent it was bound to before, None if not ours."""
    if not _still_ours(session, job_id, worker_id):
        return None
    environment = session.get(Environment, environment_id, with_for_update=True)
    assert environment is not None
    old = environment.executor
    environment.executor = executor
    if environment.status == EnvironmentStatus.REBUILDING:
        environment.status = EnvironmentStatus.READY
        environment.error = ""
    environment.updated_at = func.now()
    session.execute(
        update(EnvironmentVersion)
        .where(
            EnvironmentVersion.environment_id == environment_id,
            EnvironmentVersion.version == number,
        )
        .values(rebuild_count=EnvironmentVersion.rebuild_count + 1, rebuilt_at=func.now())
    )
    return old


def failed(
    session: Session, job_id: str, worker_id: str, environment_id: str, status: str, error: str
) -> None:
    """After a failed rebuild: ``status`` (REBUILDING with ``error`` when the files are
    known to be missing, else the status before) unless a delete was queued meanwhile."""
    if not _still_ours(session, job_id, worker_id):
        return
    environment = session.get(Environment, environment_id, with_for_update=True)
    if environment is None or environment.status != EnvironmentStatus.REBUILDING:
        return
    environment.status = status
    environment.error = error if status == EnvironmentStatus.REBUILDING else environment.error
    environment.updated_at = func.now()


def queue(session: Session, caller: User, environment_id: str, payload: payloads.Payload) -> Job:
    """An admin's rebuild or move, queued behind the environment's other jobs. A rebuild
    makes the environment REBUILDING at once; a move does when it starts (until then its
    files are where they were)."""
    environment = session.get(Environment, environment_id, with_for_update=True)
    if environment is None or environment.deleted_at is not None:
        raise NotFound(f"environment {environment_id} not found")
    if environment.status == EnvironmentStatus.DELETING:
        raise FailedPrecondition(f"environment {environment.name!r} is being deleted")
    if not environment.current_version:
        raise FailedPrecondition(
            f"environment {environment.name!r} has no version to rebuild from"
            f" (it is {environment.status})"
        )
    if isinstance(payload, payloads.RebuildPayload):
        # Asked for because its files are (thought) lost: not READY from now on.
        environment.status = EnvironmentStatus.REBUILDING
        environment.updated_at = func.now()
    return jobs.submit(session, environment, payload, caller.id)


def has_active(environment_id: str | SQLColumnExpression[str], *types: JobType) -> Exists:
    """The environment has a queued or running job of one of ``types``."""
    return exists().where(
        Job.environment_id == environment_id, Job.type.in_(types), is_active(Job.status)
    )


def drain(
    session: Session, caller_id: str, agent: str, targets: list[str]
) -> tuple[list[Job], int]:
    """Queues a move to one of ``targets`` (in turn, the least loaded first) for every
    live environment on ``agent`` that has a version, unless it is being deleted or
    already moving; binds pending or failed creates (nothing on disk) to a target at
    once. Returns the jobs and the count rebound."""
    if not targets:
        raise FailedPrecondition(f"no other agent to move the environments of {agent} to")
    loads = dict.fromkeys(targets, 0)
    counted = select(Environment.executor, func.count()).where(
        Environment.executor.in_(targets), Environment.deleted_at.is_(None)
    )
    for executor, count in session.execute(counted.group_by(Environment.executor)):
        loads[executor] = count
    query = (
        select(Environment)
        .where(Environment.executor == agent, Environment.deleted_at.is_(None))
        .order_by(Environment.created_at, Environment.id)
        .with_for_update()
    )
    queued: list[Job] = []
    rebound = 0
    for environment in session.scalars(query):
        target = min(loads, key=lambda addr: loads[addr])
        if not environment.current_version:
            if environment.status in (EnvironmentStatus.PENDING, EnvironmentStatus.FAILED):
                environment.executor = target
                loads[target] += 1
                rebound += 1
            continue  # a create that runs now stays; drain again after it
        if environment.status == EnvironmentStatus.DELETING:
            continue
        if session.scalar(select(has_active(environment.id, JobType.MOVE_ENVIRONMENT))):
            continue
        queued.append(jobs.submit(session, environment, payloads.MovePayload(target), caller_id))
        loads[target] += 1
    return queued, rebound


def admin_id(session: Session, username: str) -> str:
    """The id of the bootstrap admin, who submits the moves of ``DARB_DRAIN``."""
    found = session.scalar(select(User.id).where(User.username == username))
    if found is None:
        raise NotFound(f"admin {username!r} not found")
    return found
