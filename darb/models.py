"""Plain, immutable results of the SDK, converted from the protobuf messages.

Field names are the proto field names, so ``dataclasses.asdict`` of any of them is the
message's JSON with snake_case keys. Enums are ``StrEnum`` members named without their
proto prefix (``JobStatus.COMPLETED``); unset timestamps are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from darb.v1 import common_pb2 as pb
from darb.v1 import environments_pb2
from shared.timestamps import to_datetime


class EnvironmentStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    CREATING = "CREATING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"


class JobType(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    CREATE_ENVIRONMENT = "CREATE_ENVIRONMENT"
    INSTALL_PACKAGES = "INSTALL_PACKAGES"
    REMOVE_PACKAGES = "REMOVE_PACKAGES"
    DELETE_ENVIRONMENT = "DELETE_ENVIRONMENT"
    ROLLBACK_ENVIRONMENT = "ROLLBACK_ENVIRONMENT"


class JobStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """A job in a terminal status never changes again."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class LogStream(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    STDOUT = "STDOUT"
    STDERR = "STDERR"


def _time(message: object, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, field)
    return to_datetime(stamp)


E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], proto_enum: object, value: int, prefix: str) -> E:
    name = proto_enum.Name(value)  # type: ignore[attr-defined]
    return cls(name.removeprefix(prefix))


@dataclass(frozen=True)
class User:
    id: str
    username: str
    admin: bool
    created_at: datetime | None
    disabled: bool

    @classmethod
    def from_proto(cls, message: pb.User) -> User:
        return cls(
            id=message.id,
            username=message.username,
            admin=message.admin,
            created_at=_time(message, "created_at"),
            disabled=message.disabled,
        )


@dataclass(frozen=True)
class Environment:
    id: str
    name: str
    owner_id: str
    package_manager: str
    channels: tuple[str, ...]
    status: EnvironmentStatus
    error: str
    created_at: datetime | None
    updated_at: datetime | None
    # The number of the current version (see ``EnvironmentVersion``); 0 until created.
    current_version: int
    platforms: tuple[str, ...]

    @classmethod
    def from_proto(cls, message: pb.Environment) -> Environment:
        return cls(
            id=message.id,
            name=message.name,
            owner_id=message.owner_id,
            package_manager=message.package_manager,
            channels=tuple(message.channels),
            status=_enum(
                EnvironmentStatus, pb.EnvironmentStatus, message.status, "ENVIRONMENT_STATUS_"
            ),
            error=message.error,
            created_at=_time(message, "created_at"),
            updated_at=_time(message, "updated_at"),
            current_version=message.current_version,
            platforms=tuple(message.platforms),
        )


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    build: str
    channel: str

    @classmethod
    def from_proto(cls, message: pb.Package) -> Package:
        return cls(message.name, message.version, message.build, message.channel)


@dataclass(frozen=True)
class Job:
    id: str
    type: JobType
    status: JobStatus
    environment_id: str
    error: str
    logs: str
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    packages: tuple[str, ...]

    @classmethod
    def from_proto(cls, message: pb.Job) -> Job:
        return cls(
            id=message.id,
            type=_enum(JobType, pb.JobType, message.type, "JOB_TYPE_"),
            status=_enum(JobStatus, pb.JobStatus, message.status, "JOB_STATUS_"),
            environment_id=message.environment_id,
            error=message.error,
            logs=message.logs,
            created_at=_time(message, "created_at"),
            started_at=_time(message, "started_at"),
            completed_at=_time(message, "completed_at"),
            packages=tuple(message.packages),
        )


@dataclass(frozen=True)
class LogLine:
    seq: int
    stream: LogStream
    text: str
    time: datetime | None

    @classmethod
    def from_proto(cls, message: pb.LogLine) -> LogLine:
        return cls(
            seq=message.seq,
            stream=_enum(LogStream, pb.LogStream, message.stream, "LOG_STREAM_"),
            text=message.text,
            time=_time(message, "time"),
        )


@dataclass(frozen=True)
class Export:
    """The files that reproduce an environment with pixi."""

    manifest: str
    lockfile: str


@dataclass(frozen=True)
class EnvironmentVersion:
    """The state one successful job left, immutable. ``packages`` are those of the
    agent's platform; ``manifest`` and ``lockfile`` (the pixi.toml and pixi.lock texts)
    are empty in a listing and filled by ``client.environments.version``."""

    environment_id: str
    version: int
    job_id: str
    created_by: str
    created_at: datetime | None
    description: str
    content_hash: str
    packages: tuple[Package, ...]
    platforms: tuple[str, ...]
    manifest: str
    lockfile: str

    @classmethod
    def from_proto(cls, message: environments_pb2.EnvironmentVersion) -> EnvironmentVersion:
        return cls(
            environment_id=message.environment_id,
            version=message.version,
            job_id=message.job_id,
            created_by=message.created_by,
            created_at=_time(message, "created_at"),
            description=message.description,
            content_hash=message.content_hash,
            packages=tuple(Package.from_proto(package) for package in message.packages),
            platforms=tuple(message.platforms),
            manifest=message.manifest,
            lockfile=message.lockfile,
        )


@dataclass(frozen=True)
class PackageChange:
    """A package both versions have, in another version or build."""

    name: str
    from_version: str
    to_version: str
    from_build: str
    to_build: str

    @classmethod
    def from_proto(cls, message: environments_pb2.PackageChange) -> PackageChange:
        return cls(
            message.name,
            message.from_version,
            message.to_version,
            message.from_build,
            message.to_build,
        )


@dataclass(frozen=True)
class RequestedSpec:
    """A dependency as the manifest states it: ``spec`` is a match spec such as
    ``acme-core >=1.1``."""

    name: str
    spec: str

    @classmethod
    def from_proto(cls, message: environments_pb2.RequestedSpec) -> RequestedSpec:
        return cls(message.name, message.spec)


@dataclass(frozen=True)
class RequestedSpecChange:
    """A dependency both manifests state, differently."""

    name: str
    from_spec: str
    to_spec: str

    @classmethod
    def from_proto(cls, message: environments_pb2.RequestedSpecChange) -> RequestedSpecChange:
        return cls(message.name, message.from_spec, message.to_spec)


@dataclass(frozen=True)
class VersionDiff:
    """What differs between two versions, each list by name: the installed packages
    (``added``, ``removed``, ``changed``) and what the user asked for (``requested_*``,
    the manifests' dependencies)."""

    added: tuple[Package, ...]
    removed: tuple[Package, ...]
    changed: tuple[PackageChange, ...]
    requested_added: tuple[RequestedSpec, ...]
    requested_removed: tuple[RequestedSpec, ...]
    requested_changed: tuple[RequestedSpecChange, ...]

    @property
    def empty(self) -> bool:
        """True when the two versions install and request the same."""
        return not any(getattr(self, field.name) for field in fields(self))

    @classmethod
    def from_proto(cls, message: environments_pb2.DiffEnvironmentVersionsResponse) -> VersionDiff:
        return cls(
            added=tuple(Package.from_proto(package) for package in message.added),
            removed=tuple(Package.from_proto(package) for package in message.removed),
            changed=tuple(PackageChange.from_proto(change) for change in message.changed),
            requested_added=tuple(RequestedSpec.from_proto(s) for s in message.requested_added),
            requested_removed=tuple(RequestedSpec.from_proto(s) for s in message.requested_removed),
            requested_changed=tuple(
                RequestedSpecChange.from_proto(s) for s in message.requested_changed
            ),
        )
