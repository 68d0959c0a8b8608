"""Public ids are canonical lower-case UUID strings."""

from __future__ import annotations

import uuid

from shared.errors import InvalidArgument


def new_id() -> str:
    return str(uuid.uuid4())


def parse_id(value: str, what: str) -> str:
    """The canonical form of an id from a request, the request field ``what``."""
    if not value:
        raise InvalidArgument(f"{what} is required", what)
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidArgument(f"{what} {value[:64]!r} is not a UUID", what) from exc
