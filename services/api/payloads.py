"""What each job type carries, stored as JSON and read back only through these types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from services.api.repo.models import JobType


@dataclass(frozen=True)
class CreatePayload:
    name: str
    channels: list[str]
    packages: list[str]
    # Platforms to lock besides the agent's own.
    platforms: list[str] = field(default_factory=list)
    # An imported pixi.lock, installed as is (no solve); empty: solve ``packages``.
    lockfile: str = ""
    # What an import came from ("pixi.toml", "pixi.lock", "environment.yml"); empty
    # for a plain create.
    source: str = ""


@dataclass(frozen=True)
class InstallPayload:
    packages: list[str]


@dataclass(frozen=True)
class RemovePayload:
    packages: list[str]


@dataclass(frozen=True)
class DeletePayload:
    """Nothing beyond the environment itself."""


@dataclass(frozen=True)
class RollbackPayload:
    """Back to this version's lock (read from ``environment_versions`` when it runs)."""

    version: int


@dataclass(frozen=True)
class RebuildPayload:
    """The current version's lock installed again, as is, on the environment's agent or,
    if that agent is gone, on another (``scheduling/rebuilds.py``)."""

    # Why darb queued it itself (the job log's first line); empty for an admin's.
    reason: str = ""


@dataclass(frozen=True)
class MovePayload:
    """Rebuilt on ``agent`` (a DARB_EXECUTORS address), bound there, freed on the old one."""

    agent: str


Payload = (
    CreatePayload
    | InstallPayload
    | RemovePayload
    | DeletePayload
    | RollbackPayload
    | RebuildPayload
    | MovePayload
)

PAYLOAD_TYPES: dict[JobType, type[Payload]] = {
    JobType.CREATE_ENVIRONMENT: CreatePayload,
    JobType.INSTALL_PACKAGES: InstallPayload,
    JobType.REMOVE_PACKAGES: RemovePayload,
    JobType.DELETE_ENVIRONMENT: DeletePayload,
    JobType.ROLLBACK_ENVIRONMENT: RollbackPayload,
    JobType.REBUILD_ENVIRONMENT: RebuildPayload,
    JobType.MOVE_ENVIRONMENT: MovePayload,
}


def job_type_of(payload: Payload) -> JobType:
    return next(kind for kind, cls in PAYLOAD_TYPES.items() if isinstance(payload, cls))


def dump(payload: Payload) -> dict[str, Any]:
    return dataclasses.asdict(payload)


def _valid(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def load(job_type: str, data: dict[str, Any]) -> Payload:
    """The payload of a stored job; raises if the row does not match its type."""
    payload = PAYLOAD_TYPES[JobType(job_type)](**data)
    for item in dataclasses.fields(payload):
        value = getattr(payload, item.name)
        if not _valid(str(item.type), value):
            raise ValueError(f"{job_type} payload field {item.name} is {value!r}")
    return payload


def packages_of(payload: Payload) -> list[str]:
    return list(getattr(payload, "packages", []))


def describe(payload: Payload) -> str:
    """What a successful job did, as its version's description."""
    if isinstance(payload, CreatePayload):
        if payload.source:
            return f"imported from {payload.source}"
        return f"created with {', '.join(payload.packages)}"
    if isinstance(payload, InstallPayload):
        return f"installed {', '.join(payload.packages)}"
    if isinstance(payload, RemovePayload):
        return f"removed {', '.join(payload.packages)}"
    if isinstance(payload, RollbackPayload):
        return f"rolled back to version {payload.version}"
    if isinstance(payload, RebuildPayload):
        return "rebuilt"
    if isinstance(payload, MovePayload):
        return f"moved to {payload.agent}"
    return "deleted"
