"""Groups: named sets of users that environment policies can name. A group's creator
and the admins manage it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.ids import new_id
from services.api.repo import policies
from services.api.repo.models import EnvironmentMember, Group, GroupMember, User, utcnow
from shared.errors import AlreadyExists, NotFound, PermissionDenied


def _summary() -> Any:
    members = (
        select(func.count())
        .where(GroupMember.group_id == Group.id)
        .scalar_subquery()
        .label("member_count")
    )
    creator = select(User.username).where(User.id == Group.created_by).scalar_subquery()
    return select(Group.name, Group.created_at, creator.label("created_by"), members)


def create(session: Session, caller: User, name: str) -> Any:
    group_id = new_id()
    try:
        with session.begin_nested():
            session.execute(
                insert(Group).values(
                    id=group_id, name=name, created_by=caller.id, created_at=utcnow()
                )
            )
    except IntegrityError as exc:
        raise AlreadyExists(f"group {name!r} already exists") from exc
    return session.execute(_summary().where(Group.id == group_id)).one()


def _group(session: Session, name: str) -> Group:
    group = session.scalars(select(Group).where(Group.name == name)).one_or_none()
    if group is None:
        raise NotFound(f"group {name!r} not found")
    return group


def managed(session: Session, caller: User, name: str) -> Group:
    """The group, if the caller manages it."""
    group = _group(session, name)
    if not caller.is_admin and group.created_by != caller.id:
        raise PermissionDenied(f"only the creator of group {name!r} or an admin may change it")
    return group


def _user_id(session: Session, username: str) -> str:
    user_id = session.scalar(select(User.id).where(User.username == username))
    if user_id is None:
        raise NotFound(f"user {username!r} not found")
    return user_id


def delete_group(session: Session, caller: User, name: str) -> tuple[list[str], list[str]]:
    """Deletes the group with its memberships and the bindings naming it; returns the
    ids of its members (whose roles changed) and of the environments it was bound to
    (whose policies changed)."""
    group = managed(session, caller, name)
    bound = select(EnvironmentMember.environment_id).where(EnvironmentMember.group_id == group.id)
    environments = list(session.scalars(bound))
    policies.bump(session, environments)
    members = list(
        session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group.id))
    )
    session.execute(delete(Group).where(Group.id == group.id))
    return members, environments


def add_member(session: Session, caller: User, name: str, username: str) -> str:
    """Adds the user (again: no error); returns their id."""
    group = managed(session, caller, name)
    user_id = _user_id(session, username)
    statement = pg_insert(GroupMember).values(group_id=group.id, user_id=user_id)
    session.execute(statement.on_conflict_do_nothing())
    return user_id


def remove_member(session: Session, caller: User, name: str, username: str) -> str:
    group = managed(session, caller, name)
    user_id = _user_id(session, username)
    removed = session.execute(
        delete(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id == user_id)
    )
    if removed.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"user {username!r} is not a member of group {name!r}")
    return user_id


def page(session: Session, caller: User, after: str, limit: int) -> list[Any]:
    """Groups by name after ``after``: all for admins, else those the caller manages or
    belongs to."""
    query = _summary().where(Group.name > after)
    if not caller.is_admin:
        mine = select(GroupMember.group_id).where(GroupMember.user_id == caller.id)
        query = query.where(or_(Group.created_by == caller.id, Group.id.in_(mine)))
    return list(session.execute(query.order_by(Group.name).limit(limit)))


def _readable(session: Session, caller: User, name: str) -> Group:
    """The group, if the caller manages it or belongs to it (or is an admin)."""
    group = _group(session, name)
    if not caller.is_admin and group.created_by != caller.id:
        is_member = session.scalar(
            select(GroupMember.user_id).where(
                GroupMember.group_id == group.id, GroupMember.user_id == caller.id
            )
        )
        if is_member is None:
            raise PermissionDenied(f"only members of group {name!r} may read it")
    return group


def get(session: Session, caller: User, name: str) -> Any:
    group = _readable(session, caller, name)
    return session.execute(_summary().where(Group.id == group.id)).one()


def members(session: Session, caller: User, name: str, after: str, limit: int) -> list[str]:
    """Usernames of the group's members after ``after``; its managers and members (and
    admins) may list them."""
    group = _readable(session, caller, name)
    query = (
        select(User.username)
        .join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == group.id, User.username > after)
    )
    return list(session.scalars(query.order_by(User.username).limit(limit)))
