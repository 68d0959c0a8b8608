"""Failed logins per username, for the backoff that slows down password guessing.

Stored in the database so that every control-plane process counts the same failures.
Unknown usernames are counted like known ones, so the backoff does not tell which
accounts exist. After ``login_max_failures`` failures in a row the username is blocked
for ``login_backoff`` seconds, doubled by each further failure up to ``MAX_BACKOFF``;
a successful login, or ``MAX_BACKOFF`` without failures, starts the count afresh.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.repo.models import LoginFailure, utcnow
from shared.config import ApiLimits

MAX_BACKOFF = timedelta(minutes=15)


def blocked_for(session: Session, username: str) -> float:
    """Seconds until ``username`` may try again; 0 when it may try now."""
    row = session.get(LoginFailure, username)
    if row is None or row.blocked_until is None:
        return 0.0
    return max((row.blocked_until - utcnow()).total_seconds(), 0.0)


def backoff(failures: int, limits: ApiLimits) -> timedelta | None:
    """How long a username with ``failures`` failures in a row is blocked."""
    extra = failures - limits.login_max_failures
    if extra < 0:
        return None
    seconds = limits.login_backoff * 2 ** min(extra, 32)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


def record_failure(session: Session, username: str, limits: ApiLimits) -> None:
    now = utcnow()
    row = session.get(LoginFailure, username, with_for_update=True)
    if row is None:
        row = _insert(session, username, now)
    if row.last_failure_at < now - MAX_BACKOFF:
        row.failures = 0
    row.failures += 1
    row.last_failure_at = now
    wait = backoff(row.failures, limits)
    row.blocked_until = None if wait is None else now + wait


def forget(session: Session, username: str) -> None:
    """After a successful login: the count starts again."""
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))


def _insert(session: Session, username: str, now: datetime) -> LoginFailure:
    """A fresh row, also dropping rows nobody failed with for ``MAX_BACKOFF``, so that
    guessing many usernames does not grow the table without end."""
    session.execute(delete(LoginFailure).where(LoginFailure.last_failure_at < now - MAX_BACKOFF))
    row = LoginFailure(username=username, failures=0, last_failure_at=now, blocked_until=None)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another process inserted it first
        return session.get_one(LoginFailure, username, with_for_update=True)
    return row
