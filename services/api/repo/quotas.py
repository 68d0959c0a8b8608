"""Per-user quotas, checked in the transaction that would exceed them.

The owner's row is locked first, so two requests of one user cannot both pass a check
that only one of them fits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ScalarSelect, Select, func, select
from sqlalchemy.orm import Session

from services.api.repo.models import Environment, Job, User, is_active
from shared.config import ApiLimits
from shared.errors import ResourceExhausted


def _lock_owner(owner_id: Any) -> Select[tuple[str]]:
    # FOR NO KEY UPDATE: logins of the owner (inserting tokens that point at it) go on.
    return select(User.id).where(User.id == owner_id).with_for_update(key_share=True)


def _active_jobs(owner_id: Any) -> ScalarSelect[int]:
    query = select(func.count()).where(Job.owner_id == owner_id, is_active(Job.status))
    return query.scalar_subquery()


def _live_environments(owner_id: Any) -> ScalarSelect[int]:
    query = select(func.count()).where(
        Environment.owner_id == owner_id, Environment.deleted_at.is_(None)
    )
    return query.scalar_subquery()


def lock_owner(session: Session, owner_id: str) -> None:
    session.execute(_lock_owner(owner_id))


def refuse_new_environment(counts: Any, limits: ApiLimits) -> None:
    """Raises unless a new environment and its create job fit the owner's quotas;
    ``counts`` is the row of ``creates.CREATE_ENVIRONMENT``."""
    _refuse_environment(counts.environments, limits.max_environments_per_user)
    _refuse_job(counts.active_jobs, limits.max_active_jobs_per_user)


def check_active_jobs(session: Session, owner_id: str, limit: int) -> None:
    """Refuses a new job when the owner already has ``limit`` pending or running ones."""
    _refuse_job(session.scalar(select(_active_jobs(owner_id))) or 0, limit)


def _refuse_job(active: int, limit: int) -> None:
    if active >= limit:
        raise ResourceExhausted(
            f"you have {active} pending or running jobs, the limit "
            f"(DARB_MAX_ACTIVE_JOBS_PER_USER) is {limit}; wait for some to end or cancel them"
        )


def _refuse_environment(live: int, limit: int) -> None:
    if live >= limit:
        raise ResourceExhausted(
            f"you have {live} environments, the limit (DARB_MAX_ENVIRONMENTS_PER_USER) "
            f"is {limit}; delete one first"
        )
