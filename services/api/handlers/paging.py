"""Page sizes and opaque page tokens (a JSON key, base64url) for the list calls, whose
requests all name them ``page_size`` and ``page_token`` (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shared.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Longer than any name or id a key holds.
MAX_KEY_LENGTH = 256


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", "page_size")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _valid_part(value: Any, kind: type) -> bool:
    """Whether a decoded key part can go into a query: of the exact type (``True`` is
    not an int), an int within BIGINT, a string PostgreSQL can store."""
    if type(value) is not kind:
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and len(value) <= MAX_KEY_LENGTH and "\x00" not in value


def decode(token: str, kinds: tuple[type, ...]) -> list[Any] | None:
    """The key in a token from ``encode``, None for the first page. Tokens come from the
    client, so every part is checked against ``kinds`` before it reaches a query."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as exc:
        raise InvalidArgument("page_token is not valid", "page_token") from exc
    if not isinstance(key, list) or len(key) != len(kinds) or not all(map(_valid_part, key, kinds)):
        raise InvalidArgument("page_token is not valid", "page_token")
    return key
