"""Rules for names users choose: one function for the control plane, the agent and the
SDK, so a name is refused the same way wherever it arrives."""

from __future__ import annotations

import re

from shared.errors import InvalidArgument

# Environment names and usernames: 1-64 characters of a-z 0-9 . _ -, starting with a
# letter or digit. Matched whole (``fullmatch``): "abc\n" is not a name.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"


def validate_name(kind: str, value: str) -> str:
    """``value`` if it is a valid name, else ``InvalidArgument`` naming ``kind``."""
    if not NAME.fullmatch(value):
        raise InvalidArgument(f"{kind} {value[:80]!r} must be {NAME_RULE}")
    return value


def validate_environment_name(name: str) -> str:
    return validate_name("environment name", name)


def validate_username(name: str) -> str:
    return validate_name("username", name)
