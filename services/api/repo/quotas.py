"""Per-user quotas, checked in the transaction that would exceed them.

The owner's row is locked first, so two requests of one user cannot both pass a check
that only one of them fits (SQLite needs no lock: its transactions are serialized).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.api.errors import ResourceExhausted
from services.api.models import ACTIVE_JOB_STATUSES, Environment, Job, User


def lock_owner(session: Session, owner_id: str) -> None:
    # NO KEY UPDATE: logins of the owner (which insert tokens pointing at the row) go on.
    session.get(User, owner_id, with_for_update={"key_share": True}, populate_existing=True)


def check_active_jobs(session: Session, owner_id: str, limit: int) -> None:
    """Refuses a new job when the owner already has ``limit`` pending or running ones."""
    query = select(func.count()).where(
        Job.owner_id == owner_id, Job.status.in_(ACTIVE_JOB_STATUSES)
    )
    active = session.scalar(query) or 0
    if active >= limit:
        raise ResourceExhausted(
            f"you have {active} pending or running jobs, the limit "
            f"(DARB_MAX_ACTIVE_JOBS_PER_USER) is {limit}; wait for some to end or cancel them"
        )


def check_environments(session: Session, owner_id: str, limit: int) -> None:
    """Refuses a new environment when the owner already has ``limit`` live ones."""
    query = select(func.count()).where(
        Environment.owner_id == owner_id, Environment.deleted_at.is_(None)
    )
    live = session.scalar(query) or 0
    if live >= limit:
        raise ResourceExhausted(
            f"you have {live} environments, the limit (DARB_MAX_ENVIRONMENTS_PER_USER) "
            f"is {limit}; delete one first"
        )
