"""Plain, immutable results of the SDK, converted from the protobuf messages.

Field names are the proto field names, so ``dataclasses.asdict`` of any of them is the
message's JSON with snake_case keys. Enums are ``StrEnum`` members named without their
proto prefix (``JobStatus.COMPLETED``); unset timestamps are ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from darb.v1 import admin_pb2, environments_pb2, groups_pb2
from darb.v1 import common_pb2 as pb
from shared.timestamps import to_datetime

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class EnvironmentStatus(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    CREATING = "CREATING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"
    REBUILDING = "REBUILDING"


class JobType(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    CREATE_ENVIRONMENT = "CREATE_ENVIRONMENT"
    INSTALL_PACKAGES = "INSTALL_PACKAGES"
    REMOVE_PACKAGES = "REMOVE_PACKAGES"
    DELETE_ENVIRONMENT = "DELETE_ENVIRONMENT"
    ROLLBACK_ENVIRONMENT = "ROLLBACK_ENVIRONMENT"
    REBUILD_ENVIRONMENT = "REBUILD_ENVIRONMENT"
    MOVE_ENVIRONMENT = "MOVE_ENVIRONMENT"


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


class Role(StrEnum):
    """What a member of an environment's policy may do with it; each role can do what
    the ones below it can (``Role.EDITOR > Role.VIEWER`` compares by rank)."""

    UNSPECIFIED = "UNSPECIFIED"
    VIEWER = "VIEWER"
    EDITOR = "EDITOR"
    OWNER = "OWNER"

    @property
    def rank(self) -> int:
        return _ROLE_RANKS.index(self)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank >= other.rank


_ROLE_RANKS = (Role.UNSPECIFIED, Role.VIEWER, Role.EDITOR, Role.OWNER)


class JobPhase(StrEnum):
    """The stage of its work a running job is in."""

    UNSPECIFIED = "UNSPECIFIED"
    SOLVING = "SOLVING"
    DOWNLOADING = "DOWNLOADING"
    LINKING = "LINKING"
    WRITING_LOCK = "WRITING_LOCK"
    REMOVING = "REMOVING"


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


D = TypeVar("D", bound="DataclassInstance")


def _copied(cls: type[D], message: object) -> D:
    """A dataclass whose every field is the message's (scalar) field of the same name."""
    return cls(**{field.name: getattr(message, field.name) for field in fields(cls)})


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
    # The owner's username, and the caller's role on the environment.
    owner: str
    role: Role

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
            owner=message.owner,
            role=_enum(Role, pb.Role, message.role, "ROLE_"),
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
class Progress:
    """How far a running job has come: its ``phase``, and counts of the packages it
    links and the bytes it downloads (a total of 0: not known yet)."""

    phase: JobPhase
    packages_done: int
    packages_total: int
    bytes_done: int
    bytes_total: int
    time: datetime | None

    @property
    def fraction(self) -> float | None:
        """Done over total for the phase's own count (bytes while downloading, packages
        otherwise), within 0..1; None when that total is not known."""
        done, total = (
            (self.bytes_done, self.bytes_total)
            if self.phase == JobPhase.DOWNLOADING
            else (self.packages_done, self.packages_total)
        )
        if total <= 0:
            return None
        return min(max(done / total, 0.0), 1.0)

    @classmethod
    def from_proto(cls, message: pb.JobProgress) -> Progress:
        return cls(
            phase=_enum(JobPhase, pb.JobPhase, message.phase, "JOB_PHASE_"),
            packages_done=message.packages_done,
            packages_total=message.packages_total,
            bytes_done=message.bytes_done,
            bytes_total=message.bytes_total,
            time=_time(message, "time"),
        )


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
    # Who submitted it (an editor, perhaps, not the owner): id and username (empty if
    # the account was deleted since).
    created_by: str
    created_by_username: str
    # The last progress the running job reported; None before the first.
    progress: Progress | None

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
            created_by=message.created_by,
            created_by_username=message.created_by_username,
            progress=(
                Progress.from_proto(message.progress) if message.HasField("progress") else None
            ),
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
    # That user's username; empty if the account was deleted since.
    created_by_username: str
    created_at: datetime | None
    description: str
    content_hash: str
    packages: tuple[Package, ...]
    platforms: tuple[str, ...]
    manifest: str
    lockfile: str
    # How often its lock was installed again as is (a rebuild or a move to another
    # agent; no version is added for those), and when last (None: never).
    rebuild_count: int = 0
    rebuilt_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: environments_pb2.EnvironmentVersion) -> EnvironmentVersion:
        return cls(
            environment_id=message.environment_id,
            version=message.version,
            job_id=message.job_id,
            created_by=message.created_by,
            created_by_username=message.created_by_username,
            created_at=_time(message, "created_at"),
            description=message.description,
            content_hash=message.content_hash,
            packages=tuple(Package.from_proto(package) for package in message.packages),
            platforms=tuple(message.platforms),
            manifest=message.manifest,
            lockfile=message.lockfile,
            rebuild_count=message.rebuild_count,
            rebuilt_at=_time(message, "rebuilt_at"),
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


ALL_AUTHENTICATED_USERS = "allAuthenticatedUsers"


def member(name: str) -> str:
    """The canonical form of a policy member: ``user:<username>``, ``group:<name>`` or
    ``allAuthenticatedUsers``; a bare username means ``user:<username>``."""
    name = name.strip()
    if name == ALL_AUTHENTICATED_USERS or name.startswith(("user:", "group:")):
        return name
    if ":" in name or not name:
        raise ValueError(
            f"{name!r} is not a member: use user:NAME, group:NAME or {ALL_AUTHENTICATED_USERS}"
        )
    return f"user:{name}"


@dataclass(frozen=True)
class Policy:
    """Who may do what with one environment: each role's members, sorted, and the
    ``etag`` that ``client.environments.set_policy`` checks (read, modify, write)."""

    bindings: dict[Role, tuple[str, ...]]
    etag: str = ""

    def role_of(self, name: str) -> Role | None:
        """The highest role the policy binds this member to (not through groups)."""
        name = member(name)
        roles = [role for role, members in self.bindings.items() if name in members]
        return max(roles) if roles else None

    def with_member(self, name: str, role: Role) -> Policy:
        """This policy with ``name`` bound to ``role`` only (same etag)."""
        if role == Role.UNSPECIFIED:
            raise ValueError("a member needs a role: VIEWER, EDITOR or OWNER")
        name = member(name)
        bindings = self.without_member(name).bindings
        bindings[role] = tuple(sorted({*bindings.get(role, ()), name}))
        return Policy(_ordered(bindings), self.etag)

    def without_member(self, name: str) -> Policy:
        """This policy with ``name`` in no binding (same etag)."""
        name = member(name)
        bindings = {
            role: tuple(m for m in members if m != name) for role, members in self.bindings.items()
        }
        return Policy(_ordered(bindings), self.etag)

    def to_proto(self) -> environments_pb2.Policy:
        return environments_pb2.Policy(
            bindings=[
                environments_pb2.Binding(role=f"ROLE_{role}", members=members)
                for role, members in _ordered(self.bindings).items()
            ],
            etag=self.etag,
        )

    @classmethod
    def from_proto(cls, message: environments_pb2.Policy) -> Policy:
        bindings: dict[Role, set[str]] = {}
        for binding in message.bindings:
            role = _enum(Role, pb.Role, binding.role, "ROLE_")
            bindings.setdefault(role, set()).update(binding.members)
        return cls(_ordered(bindings), message.etag)


def _ordered(bindings: Mapping[Role, Iterable[str]]) -> dict[Role, tuple[str, ...]]:
    """Highest role first, members sorted, roles without members left out."""
    members = {role: tuple(sorted(set(names))) for role, names in bindings.items()}
    return {role: members[role] for role in sorted(members, reverse=True) if members[role]}


@dataclass(frozen=True)
class Group:
    """A named set of users that policies can name as ``group:<name>``."""

    name: str
    # The username of the user who created it (who manages it); empty if deleted since.
    created_by: str
    created_at: datetime | None
    member_count: int

    @classmethod
    def from_proto(cls, message: groups_pb2.Group) -> Group:
        return cls(
            name=message.name,
            created_by=message.created_by,
            created_at=_time(message, "created_at"),
            member_count=message.member_count,
        )


@dataclass(frozen=True)
class AgentUsage:
    """One agent's disk, in bytes of disk blocks as du counts them (a package file
    hard-linked into environments counts once, for the cache). When the agent did not
    answer, ``reachable`` is False, the sizes are 0 and ``error`` says why."""

    agent: str
    reachable: bool
    error: str
    # What the environments' directories use beyond the package cache, and how many.
    environments_bytes: int
    environments: int
    package_cache_bytes: int
    package_cache_packages: int
    # Of the file system of the agent's data directory.
    free_bytes: int
    total_bytes: int

    @classmethod
    def from_proto(cls, message: admin_pb2.AgentUsage) -> AgentUsage:
        return _copied(cls, message)


@dataclass(frozen=True)
class UserUsage:
    """What one user's live environments use: how many, and their ``bytes`` beyond the
    package cache, of all but the ``unmeasured_environments`` on agents that did not
    answer."""

    user_id: str
    username: str
    environments: int
    bytes: int
    unmeasured_environments: int

    @classmethod
    def from_proto(cls, message: admin_pb2.UserUsage) -> UserUsage:
        return _copied(cls, message)


@dataclass(frozen=True)
class Usage:
    """Every configured agent's disk, and every owner of a live environment by username."""

    agents: tuple[AgentUsage, ...]
    users: tuple[UserUsage, ...]

    @classmethod
    def from_proto(cls, message: admin_pb2.GetUsageResponse) -> Usage:
        return cls(
            agents=tuple(AgentUsage.from_proto(agent) for agent in message.agents),
            users=tuple(UserUsage.from_proto(user) for user in message.users),
        )


@dataclass(frozen=True)
class AgentSweep:
    """What a package-cache sweep did on one agent (``reachable`` False: it did not
    answer or refused, and ``error`` says why). ``packages_in_use`` were old enough to
    go but an environment links to them; ``packages_too_young`` are younger than the
    agent's DARB_PKG_CACHE_MAX_AGE."""

    agent: str
    reachable: bool
    error: str
    packages_removed: int
    bytes_freed: int
    packages_in_use: int
    packages_too_young: int

    @classmethod
    def from_proto(cls, message: admin_pb2.AgentSweep) -> AgentSweep:
        return _copied(cls, message)


@dataclass(frozen=True)
class Drain:
    """What draining an agent queued: a move job per environment with files there, and
    the count of environments with nothing on disk ``rebound`` to another agent at once."""

    jobs: tuple[Job, ...]
    rebound: int

    @classmethod
    def from_proto(cls, message: admin_pb2.DrainAgentResponse) -> Drain:
        return cls(jobs=tuple(Job.from_proto(job) for job in message.jobs), rebound=message.rebound)
