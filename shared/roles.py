"""Roles on an environment and the permissions each holds: one table for the control
plane (which checks them), the SDK and the web UI (which ask for them)."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """What a member may do with an environment (darb.v1.Role's numbers); each role can
    do what the ones below it can."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3


# Each permission TestEnvironmentPermissions knows, and the least role that holds it.
NEEDED_ROLE = {
    "environments.get": Role.VIEWER,
    "environments.update": Role.EDITOR,
    "environments.delete": Role.OWNER,
    "environments.setPolicy": Role.OWNER,
    "jobs.cancel": Role.EDITOR,
}
PERMISSIONS = tuple(NEEDED_ROLE)


def held(role: int) -> set[str]:
    """The permissions a member with ``role`` holds (none for 0, no role)."""
    return {permission for permission, needed in NEEDED_ROLE.items() if role >= needed}
