"""Agents' data directory identities: a new one queues the rebuilds of the environments
bound to that agent (``scheduling/rebuilds.py``), once, whichever control plane (of
several processes or hosts) sees it first."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.repo import rebuilds
from services.api.repo.models import Agent, Environment, EnvironmentStatus, Job, JobType, User

# What may be rebuilt: it has files (a version) and no job is rebuilding or moving it.
REBUILDABLE = (EnvironmentStatus.READY, EnvironmentStatus.FAILED)


def new_disk_reason(address: str) -> str:
    return f"agent {address} came back with an empty or replaced data directory"


def record_identity(session: Session, address: str, data_id: str) -> list[Job]:
    """Records that ``address`` answered with data directory ``data_id``. The first
    sight of an agent (or of one from before identities) only records it. A different
    id than recorded is taken by a compare-and-set, so that of two control planes that
    see it only one goes on: it queues a rebuild of every live environment bound to
    the agent that has files to lose (READY, or FAILED after its create succeeded) and
    no rebuild or move queued yet, in its owner's name, and returns those jobs."""
    recorded = session.scalar(select(Agent.data_id).where(Agent.address == address))
    if recorded is None:
        first = insert(Agent).values(address=address, data_id=data_id, seen_at=func.now())
        session.execute(first.on_conflict_do_nothing(index_elements=[Agent.address]))
        return []
    if recorded == data_id:
        return []
    changed = session.scalar(
        update(Agent)
        .where(Agent.address == address, Agent.data_id == recorded)
        .values(data_id=data_id, seen_at=func.now())
        .returning(Agent.address)
    )
    if changed is None:
        return []  # another control plane recorded it and queued the rebuilds
    return _queue_rebuilds(session, address)


def _queue_rebuilds(session: Session, address: str) -> list[Job]:
    query = (
        select(Environment)
        .where(
            Environment.executor == address,
            Environment.deleted_at.is_(None),
            Environment.current_version > 0,
            Environment.status.in_(REBUILDABLE),
            ~rebuilds.has_active(
                Environment.id, JobType.REBUILD_ENVIRONMENT, JobType.MOVE_ENVIRONMENT
            ),
        )
        .order_by(Environment.id)
        .with_for_update()
    )
    payload = payloads.RebuildPayload(new_disk_reason(address))
    queued: list[Job] = []
    for environment in session.scalars(query).all():
        owner = session.get(User, environment.owner_id)
        assert owner is not None  # users.id is the owner's foreign key
        queued.append(rebuilds.queue(session, owner, environment.id, payload))
    return queued
