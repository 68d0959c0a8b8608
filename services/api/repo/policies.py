"""An environment's policy: its members and their roles, read and replaced whole.

A member is written ``user:<username>``, ``group:<name>`` or ``allAuthenticatedUsers``;
rows store ids (``EnvironmentMember``), so a renamed or deleted account or group cannot
leave a stale name behind. ``policy_version`` grows with each replacement; the etag is
made from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from services.api.repo.models import (
    EVERYONE_KEY,
    Environment,
    EnvironmentMember,
    Group,
    Role,
    User,
)
from shared.errors import InvalidArgument

EVERYONE = "allAuthenticatedUsers"
USER_PREFIX = "user:"
GROUP_PREFIX = "group:"


@dataclass(frozen=True)
class Member:
    """One resolved member: its written form and what its row stores."""

    name: str
    key: str
    user_id: str | None = None
    group_id: str | None = None


def etag(environment: Environment) -> str:
    digest = hashlib.sha256(f"{environment.id}:{environment.policy_version}".encode())
    return digest.hexdigest()[:20]


def members(session: Session, environment_id: str) -> list[tuple[Role, str]]:
    """(role, member) of the environment's policy, in no particular order."""
    query = (
        select(EnvironmentMember.role, EnvironmentMember.member_key, User.username, Group.name)
        .outerjoin(User, User.id == EnvironmentMember.user_id)
        .outerjoin(Group, Group.id == EnvironmentMember.group_id)
        .where(EnvironmentMember.environment_id == environment_id)
    )
    found = []
    for role, key, username, group in session.execute(query):
        if key == EVERYONE_KEY:
            name = EVERYONE
        elif username is not None:
            name = USER_PREFIX + username
        else:
            name = GROUP_PREFIX + group
        found.append((Role(role), name))
    return found


def resolve(session: Session, names: list[str]) -> dict[str, Member]:
    """The members named, by written form; InvalidArgument naming an unknown one."""
    usernames = {name[len(USER_PREFIX) :] for name in names if name.startswith(USER_PREFIX)}
    groups = {name[len(GROUP_PREFIX) :] for name in names if name.startswith(GROUP_PREFIX)}
    user_ids: dict[str, str] = {
        username: user_id
        for username, user_id in session.execute(
            select(User.username, User.id).where(User.username.in_(usernames))
        )
    }
    group_ids: dict[str, str] = {
        name: group_id
        for name, group_id in session.execute(
            select(Group.name, Group.id).where(Group.name.in_(groups))
        )
    }
    resolved: dict[str, Member] = {}
    for name in names:
        if name == EVERYONE:
            resolved[name] = Member(name, EVERYONE_KEY)
        elif name.startswith(USER_PREFIX) and name[len(USER_PREFIX) :] in user_ids:
            user_id = user_ids[name[len(USER_PREFIX) :]]
            resolved[name] = Member(name, f"user:{user_id}", user_id=user_id)
        elif name.startswith(GROUP_PREFIX) and name[len(GROUP_PREFIX) :] in group_ids:
            group_id = group_ids[name[len(GROUP_PREFIX) :]]
            resolved[name] = Member(name, f"group:{group_id}", group_id=group_id)
        else:
            kind = "user" if name.startswith(USER_PREFIX) else "group"
            raise InvalidArgument(f"policy member {name!r}: no such {kind}")
    return resolved


def replace(session: Session, environment: Environment, roles: dict[Member, Role]) -> None:
    """Makes ``roles`` the environment's whole policy and moves its etag on. The update
    of the environment's row also tells every control plane (its trigger's NOTIFY)."""
    session.execute(
        delete(EnvironmentMember).where(EnvironmentMember.environment_id == environment.id)
    )
    rows = [
        {
            "environment_id": environment.id,
            "member_key": member.key,
            "user_id": member.user_id,
            "group_id": member.group_id,
            "role": int(role),
        }
        for member, role in roles.items()
    ]
    if rows:
        session.execute(insert(EnvironmentMember), rows)
    bump(session, [environment.id])
    session.refresh(environment, ["policy_version"])


def bump(session: Session, environment_ids: list[str]) -> None:
    """The environments' policies changed (replaced, or a group they name was deleted):
    new etags, and their rows changed, so every control plane drops what it cached."""
    if environment_ids:
        session.execute(
            update(Environment)
            .where(Environment.id.in_(environment_ids))
            .values(policy_version=Environment.policy_version + 1)
        )
