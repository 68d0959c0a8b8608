"""Environments and their installed packages, always seen through the caller's access."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from services.api.database.direct import Query
from services.api.ids import new_id
from services.api.records import PackageRow
from services.api.repo.models import Environment, EnvironmentStatus, InstalledPackage, User, utcnow
from shared.errors import AlreadyExists, NotFound


def _visible(environment_id: Any, owner_id: Any, admin: Any) -> ColumnElement[bool]:
    """A live environment the caller owns (or any, for admins)."""
    return and_(
        Environment.id == environment_id,
        Environment.deleted_at.is_(None),
        or_(admin, Environment.owner_id == owner_id),
    )


# What convert.environment reads: not the manifest and lock, which can be large.
SUMMARY_COLUMNS = (
    *("id", "owner_id", "name", "package_manager", "channels"),
    *("status", "error", "created_at", "updated_at", "current_version", "platforms"),
)
# For the direct path (see services/api/direct.py); parameters: id, owner, admin.
VISIBLE = Query(
    select(*(Environment.__table__.c[name] for name in SUMMARY_COLUMNS)).where(
        _visible(bindparam("id"), bindparam("owner"), bindparam("admin", type_=Boolean))
    )
)


def not_found(environment_id: str) -> NotFound:
    return NotFound(f"environment {environment_id} not found")


def get_visible(
    session: Session,
    caller: User,
    environment_id: str,
    for_update: bool = False,
    deleted: bool = False,
) -> Environment:
    """A live environment the caller owns (or any, for admins), or with ``deleted`` also
    one that was deleted (its history stays readable); NotFound otherwise."""
    condition = _visible(environment_id, caller.id, caller.is_admin)
    if deleted:
        condition = Environment.id == environment_id
        if not caller.is_admin:
            condition = and_(condition, Environment.owner_id == caller.id)
    query = select(Environment).where(condition)
    if for_update:
        query = query.with_for_update()
    environment = session.scalars(query).one_or_none()
    if environment is None:
        raise not_found(environment_id)
    return environment


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


def page(session: Session, caller: User, after: tuple[str, str], limit: int) -> list[Environment]:
    """Live environments ordered by (name, id), after the given key."""
    name, env_id = after
    query = select(Environment).where(
        Environment.deleted_at.is_(None),
        (Environment.name > name) | ((Environment.name == name) & (Environment.id > env_id)),
    )
    if not caller.is_admin:
        query = query.where(Environment.owner_id == caller.id)
    query = query.order_by(Environment.name, Environment.id).limit(limit)
    return list(session.scalars(query))


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
