"""Who a bearer token belongs to, remembered for a few seconds (see ``caches``).

A change to a user (disabled, deleted, demoted, new password) drops that user's entries
at once in the process that made it and, by NOTIFY, in every other control-plane
process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from services.api.caches import NotifiedCache
from services.api.repo.models import User, utcnow

TTL_SECONDS = 5.0
MAX_ENTRIES = 10_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCache(NotifiedCache[str, tuple[User, datetime]]):
    """By the token itself (no hashing per call): its user and when it expires."""

    def __init__(self, ttl: float = TTL_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        super().__init__(ttl, max_entries)

    def user(self, token: str) -> User | None:
        entry = self.get(token)
        if entry is None:
            return None
        user, expires_at = entry
        return user if expires_at > utcnow() else None

    def forget_user(self, user_id: str) -> None:
        self.forget_where(lambda entry: entry[0].id == user_id)
