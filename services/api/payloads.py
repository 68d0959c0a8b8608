"""What each job type carries, stored as JSON and read back only through these types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from services.api.repo.models import JobType


@dataclass(frozen=True)
class CreatePayload:
    name: str
    channels: list[str]
    packages: list[str]


@dataclass(frozen=True)
class InstallPayload:
    packages: list[str]


@dataclass(frozen=True)
class RemovePayload:
    packages: list[str]


@dataclass(frozen=True)
class DeletePayload:
    """Nothing beyond the environment itself."""


Payload = CreatePayload | InstallPayload | RemovePayload | DeletePayload

PAYLOAD_TYPES: dict[JobType, type[Payload]] = {
    JobType.CREATE_ENVIRONMENT: CreatePayload,
    JobType.INSTALL_PACKAGES: InstallPayload,
    JobType.REMOVE_PACKAGES: RemovePayload,
    JobType.DELETE_ENVIRONMENT: DeletePayload,
}


def job_type_of(payload: Payload) -> JobType:
    return next(kind for kind, cls in PAYLOAD_TYPES.items() if isinstance(payload, cls))


def dump(payload: Payload) -> dict[str, Any]:
    return dataclasses.asdict(payload)


def load(job_type: str, data: dict[str, Any]) -> Payload:
    """The payload of a stored job; raises if the row does not match its type."""
    payload = PAYLOAD_TYPES[JobType(job_type)](**data)
    for field in dataclasses.fields(payload):
        value = getattr(payload, field.name)
        valid = (
            isinstance(value, str)
            if field.type == "str"
            else isinstance(value, list) and all(isinstance(item, str) for item in value)
        )
        if not valid:
            raise ValueError(f"{job_type} payload field {field.name} is {value!r}")
    return payload


def packages_of(payload: Payload) -> list[str]:
    return list(getattr(payload, "packages", []))
