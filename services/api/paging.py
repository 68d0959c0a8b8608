"""Page sizes and opaque page tokens (a JSON key, base64url) for the list calls."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.api.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode(token: str, length: int) -> list[Any] | None:
    """The key in a token from ``encode``, None for the first page."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not valid") from exc
    if not isinstance(key, list) or len(key) != length:
        raise InvalidArgument("page_token is not valid")
    return key
