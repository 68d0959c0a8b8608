"""Rules for names users choose, shared by the control plane and the agent."""

from __future__ import annotations

import re

from shared.specs import InvalidInput

ENVIRONMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_environment_name(name: str) -> str:
    """1-64 characters of a-z 0-9 . _ -, starting with a letter or digit."""
    if not ENVIRONMENT_NAME.fullmatch(name or ""):
        raise InvalidInput(
            f"environment name {name[:80]!r} must be 1-64 characters of a-z, 0-9, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    return name
