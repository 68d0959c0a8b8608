"""Environments and their installed packages, always seen through the caller's access."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    func,
    literal,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from services.api import filters
from services.api.database.direct import Query
from services.api.ids import new_id
from services.api.records import PackageRow
from services.api.repo import access
from services.api.repo.models import (
    Environment,
    EnvironmentStatus,
    InstalledPackage,
    Role,
    User,
    utcnow,
)
from shared.errors import AlreadyExists

# What convert.environment reads: not the manifest and lock, which can be large.
SUMMARY_COLUMNS = (
    *("id", "owner_id", "name", "package_manager", "channels"),
    *("status", "error", "created_at", "updated_at", "current_version", "platforms"),
)


def _summary() -> list[Any]:
    """The summary columns and the owner's username (``owner``)."""
    columns = [Environment.__table__.c[name] for name in SUMMARY_COLUMNS]
    return [*columns, User.username.label("owner")]


# For the direct path (see services/api/database/direct.py); parameters: id, user. The
# caller's role is ``role`` (NULL: none; admins are the caller's business).
VISIBLE = Query(
    select(*_summary(), access.role_of(Environment.id, bindparam("user")).label("role"))
    .join(User, User.id == Environment.owner_id)
    .where(Environment.id == bindparam("id"), Environment.deleted_at.is_(None))
)


def get_visible(
    session: Session,
    caller: User,
    environment_id: str,
    need: Role = Role.VIEWER,
    for_update: bool = False,
    deleted: bool = False,
) -> Environment:
    """A live environment on which the caller holds at least ``need`` (``access``), or
    with ``deleted`` also one that was deleted (its history stays readable)."""
    found, _ = access.environment(
        session, caller, environment_id, need, for_update=for_update, deleted=deleted
    )
    return found


def new(
    owner_id: str, name: str, package_manager: str, channels: list[str], executor: str
) -> Environment:
    """A PENDING environment not yet stored (``darb_create_environment`` inserts it)."""
    now = utcnow()
    return Environment(
        id=new_id(),
        owner_id=owner_id,
        name=name,
        package_manager=package_manager,
        channels=channels,
        executor=executor,
        status=EnvironmentStatus.PENDING,
        error="",
        manifest="",
        lockfile="",
        created_at=now,
        updated_at=now,
        current_version=0,
        platforms=[],
    )


def already_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"you already have an environment named {name!r}")


def _like(value: str) -> str:
    """The LIKE pattern of a ``name`` value with wildcards: ``*`` becomes ``%``, and the
    rest matches literally (``%``, ``_`` and ``\\`` escaped with ``\\``)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace(filters.WILDCARD, "%")


def _shared_with(caller: User) -> ColumnElement[bool]:
    """Someone else's environment that a membership gives the caller a role on (an
    admin's role on every environment is not a share)."""
    granted = access.memberships(caller.id).subquery()
    return and_(
        Environment.owner_id != caller.id, Environment.id.in_(select(granted.c.environment_id))
    )


def _restrict(
    query: Select[Any], caller: User, rule: filters.Restriction, role: Any
) -> Select[Any]:
    column: Any
    value: Any
    if rule.field == "name" and filters.WILDCARD in rule.value:
        matches = Environment.name.like(_like(rule.value), escape="\\")
        return query.where(~matches if rule.negated else matches)
    if rule.field == "shared":
        shared = _shared_with(caller)
        return query.where(shared if rule.negated == (rule.value == "FALSE") else ~shared)
    if rule.field == "name":
        column, value = Environment.name, rule.value
    elif rule.field == "status":
        column, value = Environment.status, rule.value
    elif rule.field == "role":
        column, value = role, int(Role[rule.value])
    elif rule.value == filters.ME:
        column, value = Environment.owner_id, caller.id
    else:
        column, value = User.username, rule.value
    return query.where(column != value if rule.negated else column == value)


# A caller with this many memberships (their own, their groups', everyone's) is listed
# by walking environments in name order; one with fewer, from the memberships.
MANY_MEMBERSHIPS = 1000


def _sees_many(session: Session, caller: User) -> bool:
    memberships = access.memberships(caller.id).limit(MANY_MEMBERSHIPS).subquery()
    return (session.scalar(select(func.count()).select_from(memberships)) or 0) >= MANY_MEMBERSHIPS


def _listing(session: Session, caller: User) -> tuple[Select[Any], Any]:
    """The query of the environments the caller may view, with its role column. Two
    plans for one answer: from the caller's memberships when they are few (the rest of
    the environments are never read), else in name order with each environment's role
    looked up, so that a page stops after its last row."""
    if caller.is_admin:
        role: Any = literal(int(Role.OWNER))
        return select(*_summary(), role.label("role")), role
    if _sees_many(session, caller):
        found = access.role_row(Environment.id, caller.id)  # looked up once per environment
        query = select(*_summary(), found.c.role).select_from(Environment).join(found, true())
        return query.where(found.c.role.is_not(None)), found.c.role
    visible = access.visible(caller.id).subquery()
    query = select(*_summary(), visible.c.role.label("role")).join(
        visible, visible.c.environment_id == Environment.id
    )
    return query, visible.c.role


def page(
    session: Session,
    caller: User,
    restrictions: list[filters.Restriction],
    after: tuple[str, str],
    limit: int,
) -> list[Any]:
    """Live environments the caller may view, ordered by (name, id) after the given key,
    each with its ``owner`` (username) and the caller's ``role``."""
    query, role = _listing(session, caller)
    query = query.join(User, User.id == Environment.owner_id).where(
        Environment.deleted_at.is_(None), tuple_(Environment.name, Environment.id) > after
    )
    for rule in restrictions:
        query = _restrict(query, caller, rule, role)
    query = query.order_by(Environment.name, Environment.id).limit(limit)
    return list(session.execute(query))


def packages(session: Session, environment_id: str) -> list[PackageRow]:
    query = (
        select(InstalledPackage)
        .where(InstalledPackage.environment_id == environment_id)
        .order_by(InstalledPackage.name)
    )
    return [
        PackageRow(row.name, row.version, row.build, row.channel) for row in session.scalars(query)
    ]


def rebind(session: Session, environment_id: str, executor: str) -> None:
    """Moves a not-yet-created environment to another agent (nothing is on disk yet)."""
    session.execute(
        update(Environment).where(Environment.id == environment_id).values(executor=executor)
    )
