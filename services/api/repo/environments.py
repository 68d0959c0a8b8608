"""Environments and their installed packages, always seen through the caller's access."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.errors import AlreadyExists, NotFound
from services.api.ids import new_id
from services.api.models import Environment, EnvironmentStatus, InstalledPackage, User, utcnow


@dataclass(frozen=True)
class PackageRow:
    name: str
    version: str
    build: str
    channel: str


def get_visible(
    session: Session, caller: User, environment_id: str, for_update: bool = False
) -> Environment:
    """A live environment the caller owns (or any, for admins); NotFound otherwise."""
    query = select(Environment).where(
        Environment.id == environment_id, Environment.deleted_at.is_(None)
    )
    if not caller.is_admin:
        query = query.where(Environment.owner_id == caller.id)
    if for_update:
        query = query.with_for_update()
    environment = session.scalars(query).one_or_none()
    if environment is None:
        raise NotFound(f"environment {environment_id} not found")
    return environment


def create(
    session: Session,
    owner: User,
    name: str,
    package_manager: str,
    channels: list[str],
    executor: str,
) -> Environment:
    now = utcnow()
    environment = Environment(
        id=new_id(),
        owner_id=owner.id,
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
    )
    try:
        with session.begin_nested():
            session.add(environment)
    except IntegrityError as exc:
        raise AlreadyExists(f"you already have an environment named {name!r}") from exc
    return environment


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


def replace_packages(session: Session, environment_id: str, rows: list[PackageRow]) -> None:
    session.execute(
        delete(InstalledPackage).where(InstalledPackage.environment_id == environment_id)
    )
    session.add_all(
        InstalledPackage(
            environment_id=environment_id,
            name=row.name,
            version=row.version,
            build=row.build,
            channel=row.channel,
        )
        for row in rows
    )
