"""Who a bearer token belongs to, remembered for a few seconds.

Every RPC authenticates, and a database round trip for each would cost more than the
cheap reads themselves. A change to a user (disabled, deleted, demoted, new password)
drops that user's entries at once in the process that made it and, by NOTIFY, in every
other control-plane process; while that notification channel is down nothing is cached.
A generation counter keeps a lookup that raced with such a change from caching what it
read before the change committed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

from services.api.models import User, utcnow

# Bounds how long a change another process missed (a lost notification) goes unseen.
TTL_SECONDS = 5.0
MAX_ENTRIES = 10_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Entry:
    user: User
    expires_at: datetime
    cached_until: float


class TokenCache:
    def __init__(self, ttl: float = TTL_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}  # by the token itself: no hashing per call
        self.generation = 0
        # Off until the notification channel is up (and whenever it is down).
        self.enabled = False

    def get(self, token: str) -> User | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry.cached_until < time.monotonic() or entry.expires_at <= utcnow():
            del self._entries[token]
            return None
        return entry.user

    def put(self, token: str, user: User, expires_at: datetime, generation: int) -> None:
        """Remembers a lookup that started at ``generation``, unless a user changed since."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # simpler than LRU; a refill costs one lookup per token
        self._entries[token] = _Entry(user, expires_at, time.monotonic() + self._ttl)

    def forget_user(self, user_id: str) -> None:
        self.generation += 1
        for token in [t for t, e in self._entries.items() if e.user.id == user_id]:
            del self._entries[token]

    def set_enabled(self, enabled: bool) -> None:
        """Called as the notification channel comes and goes; either way, start empty."""
        self.enabled = enabled
        self.generation += 1
        self._entries.clear()
