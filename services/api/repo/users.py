"""Users and their login tokens. A disabled or deleted user's tokens stop working at once:
every request looks its token up together with the user."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.auth.tokens import token_hash
from services.api.repo.models import ApiToken, Environment, Job, JobLogLine, User, utcnow
from shared.errors import AlreadyExists, FailedPrecondition, NotFound


def by_username(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def create(session: Session, username: str, password_hash: str, admin: bool) -> User:
    user = User(
        id=str(uuid.uuid4()),
        username=username,
        password_hash=password_hash,
        is_admin=admin,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():  # a savepoint, so the caller's transaction survives
            session.add(user)
    except IntegrityError as exc:
        raise AlreadyExists(f"user {username!r} already exists") from exc
    return user


def ensure_admin(session: Session, username: str, password_hash: str) -> bool:
    """Creates the first admin unless that user exists; True if it was created."""
    if by_username(session, username) is not None:
        return False
    try:
        create(session, username, password_hash, admin=True)
    except AlreadyExists:  # another process starting at the same moment won
        return False
    return True


def page(session: Session, after_username: str, limit: int) -> list[User]:
    query = select(User).where(User.username > after_username).order_by(User.username)
    return list(session.scalars(query.limit(limit)))


def issue_token(session: Session, user_id: str, ttl: timedelta) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + ttl
    session.add(
        ApiToken(
            token_hash=token_hash(token), user_id=user_id, created_at=now, expires_at=expires_at
        )
    )
    session.execute(delete(ApiToken).where(ApiToken.expires_at < now))
    return token, expires_at


def token_owner(session: Session, hashed_token: str) -> tuple[User, datetime] | None:
    """The enabled user a live token belongs to, and when the token expires."""
    query = (
        select(User, ApiToken.expires_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(
            ApiToken.token_hash == hashed_token,
            ApiToken.expires_at > utcnow(),
            User.disabled.is_(False),
        )
    )
    row = session.execute(query).one_or_none()
    return None if row is None else (row[0], row[1])


def get(session: Session, user_id: str, for_update: bool = False) -> User:
    user = session.get(User, user_id, with_for_update=for_update, populate_existing=for_update)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def revoke_token(session: Session, hashed_token: str) -> None:
    session.execute(delete(ApiToken).where(ApiToken.token_hash == hashed_token))


def revoke_tokens(session: Session, user_id: str) -> None:
    session.execute(delete(ApiToken).where(ApiToken.user_id == user_id))


def update(
    session: Session,
    user_id: str,
    password_hash: str | None,
    admin: bool | None,
    disabled: bool | None,
) -> User:
    """Changes the given fields; a new password or disabling ends the user's sessions."""
    user = get(session, user_id, for_update=True)
    if admin is not None:
        user.is_admin = admin
    if disabled is not None:
        user.disabled = disabled
    if password_hash is not None:
        user.password_hash = password_hash
    if password_hash is not None or disabled:
        revoke_tokens(session, user_id)
    return user


def delete_user(session: Session, user_id: str) -> None:
    """Deletes a user with no live environment, with the history of its deleted ones.

    Live environments still have files on an agent, so they must be deleted first (or
    the user disabled instead). Every job of a deleted environment has ended.
    """
    user = get(session, user_id, for_update=True)
    live = session.scalar(
        select(func.count()).where(
            Environment.owner_id == user_id, Environment.deleted_at.is_(None)
        )
    )
    if live:
        raise FailedPrecondition(
            f"user {user.username!r} still has {live} environments; delete them first "
            "or disable the user"
        )
    revoke_tokens(session, user_id)
    jobs_of_user = select(Job.id).where(Job.owner_id == user_id)
    session.execute(delete(JobLogLine).where(JobLogLine.job_id.in_(jobs_of_user)))
    session.execute(delete(Job).where(Job.owner_id == user_id))
    session.execute(delete(Environment).where(Environment.owner_id == user_id))
    session.delete(user)
