"""Values one control-plane process remembers for a few seconds, dropped as soon as a
NOTIFY (or this process itself) says they changed.

Every RPC authenticates and the most frequent one reads a single environment: a
database round trip for each costs more than the rest of the call. While the
notification channel is down nothing is cached, since a change committed elsewhere
could go unseen. A generation counter keeps a lookup that raced with a change from
caching what it read before the change committed: read ``generation`` before the
lookup and hand it to ``put``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class NotifiedCache(Generic[K, V]):
    """Entries for at most ``ttl`` seconds; at most ``max_entries`` of them."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl  # bounds how long a lost notification leaves a change unseen
        self._max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}
        self.generation = 0
        # Off until the notification channel is up (and whenever it is down).
        self.enabled = False

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, cached_until = entry
        if cached_until < time.monotonic():
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, generation: int) -> None:
        """Remembers a lookup that started at ``generation``, unless something changed
        since."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # simpler than LRU; a refill costs one lookup per key
        self._entries[key] = (value, time.monotonic() + self._ttl)

    def forget(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def forget_where(self, changed: Callable[[V], bool]) -> None:
        self.generation += 1
        for key in [key for key, (value, _) in self._entries.items() if changed(value)]:
            del self._entries[key]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def set_enabled(self, enabled: bool) -> None:
        """Called as the notification channel comes and goes; either way, start empty."""
        self.enabled = enabled
        self.clear()
