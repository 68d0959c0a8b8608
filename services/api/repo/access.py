"""Who may do what with an environment: its policy's roles, checked on every call.

A caller with no role on an environment learns nothing of it (NotFound, as for one that
does not exist); a caller whose role is too weak for the call is told which role it
needs. Admins hold every role.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, CompoundSelect, Select, func, or_, select, union_all
from sqlalchemy.orm import Session

from services.api.repo.models import (
    EVERYONE_KEY,
    Environment,
    EnvironmentMember,
    GroupMember,
    Role,
    User,
)
from shared.errors import NotFound, PermissionDenied


def _highest_role(environment_id: Any, user_id: Any) -> Select[tuple[int]]:
    members = visible_members(user_id).where(EnvironmentMember.environment_id == environment_id)
    return members.with_only_columns(func.max(EnvironmentMember.role).label("role"))


def role_of(environment_id: Any, user_id: Any) -> ColumnElement[int]:
    """The user's role on the environment as SQL, NULL for none: a scalar subquery, which
    PostgreSQL runs as a few index lookups per environment."""
    return _highest_role(environment_id, user_id).scalar_subquery()


def role_row(environment_id: Any, user_id: Any) -> Any:
    """The same as a LATERAL subquery of one row, whose ``role`` column a query can
    select and filter on while PostgreSQL computes it once per environment."""
    return _highest_role(environment_id, user_id).lateral()


def caller_role(caller: User, stored: int | None) -> Role | None:
    """The role a call is judged by: the policy's, or OWNER for an admin."""
    if caller.is_admin:
        return Role.OWNER
    return None if stored is None else Role(stored)


def not_found(environment_id: str) -> NotFound:
    return NotFound(f"environment {environment_id} not found")


def require(role: Role | None, need: Role, environment_id: str) -> Role:
    """``role`` if it is at least ``need``; NotFound for no role at all."""
    if role is None:
        raise not_found(environment_id)
    if role < need:
        raise PermissionDenied(
            f"this needs the {need.name.lower()} role on environment {environment_id};"
            f" you have {role.name.lower()}"
        )
    return role


def _names_user(user_id: Any) -> tuple[ColumnElement[bool], ...]:
    """The ways a membership names the user: as themself, as a group of theirs, as
    everyone (a membership is one of the three)."""
    groups = select(GroupMember.group_id).where(GroupMember.user_id == user_id)
    return (
        EnvironmentMember.user_id == user_id,
        EnvironmentMember.group_id.in_(groups.scalar_subquery()),
        EnvironmentMember.member_key == EVERYONE_KEY,
    )


_MEMBER_COLUMNS = (EnvironmentMember.environment_id, EnvironmentMember.role)


def visible_members(user_id: Any) -> Select[tuple[str, int]]:
    """(environment_id, role) of every membership that names the user, a group of
    theirs, or everyone."""
    return select(*_MEMBER_COLUMNS).where(or_(*_names_user(user_id)))


def memberships(user_id: Any) -> CompoundSelect[tuple[str, int]]:
    """The rows of ``visible_members`` as a query that reads only them: one index scan
    for each way of naming the user, joined by UNION ALL. The OR of ``visible_members``
    suits a lookup on one environment, whose key bounds it; over all of a user's,
    PostgreSQL can only run it as a scan of every membership of every user."""
    return union_all(*(select(*_MEMBER_COLUMNS).where(way) for way in _names_user(user_id)))


def visible(user_id: Any) -> Select[tuple[str, int]]:
    """(environment_id, role) of every environment the user has a role on: the highest
    of its memberships'."""
    members = memberships(user_id).subquery()
    return select(members.c.environment_id, func.max(members.c.role).label("role")).group_by(
        members.c.environment_id
    )


def environment(
    session: Session,
    caller: User,
    environment_id: str,
    need: Role = Role.VIEWER,
    *,
    for_update: bool = False,
    deleted: bool = False,
) -> tuple[Environment, Role]:
    """The environment and the caller's role, if it is at least ``need``. Only a live
    one, unless ``deleted`` (a deleted environment's history stays readable)."""
    query = select(Environment, role_of(Environment.id, caller.id)).where(
        Environment.id == environment_id
    )
    if not deleted:
        query = query.where(Environment.deleted_at.is_(None))
    if for_update:
        query = query.with_for_update(of=Environment)
    row = session.execute(query).one_or_none()
    if row is None:
        raise not_found(environment_id)
    found, stored = row
    return found, require(caller_role(caller, stored), need, environment_id)
