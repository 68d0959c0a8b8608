"""Users and their login tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.errors import AlreadyExists
from services.api.models import ApiToken, User, utcnow


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
            token_hash=_token_hash(token), user_id=user_id, created_at=now, expires_at=expires_at
        )
    )
    session.execute(delete(ApiToken).where(ApiToken.expires_at < now))
    return token, expires_at


def user_for_token(session: Session, token: str) -> User | None:
    query = (
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == _token_hash(token), ApiToken.expires_at > utcnow())
    )
    return session.scalars(query).one_or_none()
