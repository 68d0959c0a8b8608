"""The tables. Statuses are stored as their names; times are UTC."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    SQLColumnExpression,
    String,
    Text,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column

from shared.roles import Role as Role  # the role table lives in shared/ (the SDK uses it)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Every time column: timestamptz, read back as an aware datetime in UTC.
UtcDateTime = DateTime(timezone=True)


class EnvironmentStatus(enum.StrEnum):
    PENDING = "PENDING"
    CREATING = "CREATING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"
    # Its files are being rebuilt from its current version (``scheduling/rebuilds.py``).
    REBUILDING = "REBUILDING"


class JobType(enum.StrEnum):
    CREATE_ENVIRONMENT = "CREATE_ENVIRONMENT"
    INSTALL_PACKAGES = "INSTALL_PACKAGES"
    REMOVE_PACKAGES = "REMOVE_PACKAGES"
    DELETE_ENVIRONMENT = "DELETE_ENVIRONMENT"
    ROLLBACK_ENVIRONMENT = "ROLLBACK_ENVIRONMENT"
    REBUILD_ENVIRONMENT = "REBUILD_ENVIRONMENT"
    MOVE_ENVIRONMENT = "MOVE_ENVIRONMENT"


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
# ``is_active`` as SQL text, for a partial index's condition.
ACTIVE_JOBS_CONDITION = "status = 'PENDING' OR status = 'RUNNING'"


def is_active(status: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """``status`` is pending or running, with the statuses (our own constants) written
    into the SQL: an expanding IN list could not run on the direct psycopg path."""
    return or_(*(status == literal_column(f"'{value}'") for value in ACTIVE_JOB_STATUSES))


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


def _username_of(user_id: Any) -> Any:
    """The username of ``user_id`` as a scalar subquery, for a ``column_property``."""
    return select(User.username).where(User.id == user_id).scalar_subquery()


class LoginFailure(Base):
    """Recent failed logins for one username, known or not, so that every control-plane
    process slows down guessing in the same way and unknown names look like known ones."""

    __tablename__ = "login_failures"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiToken(Base):
    """A login session; only the SHA-256 of the bearer token is stored."""

    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Environment(Base):
    __tablename__ = "environments"
    __table_args__ = (
        Index(
            "uq_environments_owner_live_name",
            "owner_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "ix_environments_live_name_id",
            "name",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The creator: the environment and its jobs count against this user's quotas.
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    package_manager: Mapped[str] = mapped_column(String(16))
    channels: Mapped[list[str]] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    manifest: Mapped[str] = mapped_column(Text, default="")
    lockfile: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # 0 until the create succeeds; then the number of the newest EnvironmentVersion.
    current_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    platforms: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    # Grows with every change of the policy (environment_members); the etag is made from it.
    policy_version: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Manages the group (with the admins); NULL once that account is deleted.
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


# ``EnvironmentMember.member_key`` of the binding to everyone signed in.
EVERYONE_KEY = "all"


class EnvironmentMember(Base):
    """One member of an environment's policy and its role. ``member_key`` is
    ``user:<id>``, ``group:<id>`` or ``all``; ``user_id``/``group_id`` hold the foreign key
    of the first two, so that deleting the user or the group drops the row."""

    __tablename__ = "environment_members"
    __table_args__ = (
        CheckConstraint("role BETWEEN 1 AND 3", name="ck_environment_members_role"),
        Index(
            "ix_environment_members_everyone",
            "environment_id",
            postgresql_where=text(f"member_key = '{EVERYONE_KEY}'"),
        ),
    )

    environment_id: Mapped[str] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    member_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    group_id: Mapped[str | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[int] = mapped_column(SmallInteger)


class EnvironmentVersion(Base):
    """The state a successful job left (``darb_finish_job`` writes it): immutable.
    ``packages`` are the host platform's, as ``[name, version, build, channel]``."""

    __tablename__ = "environment_versions"

    environment_id: Mapped[str] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    created_by: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    description: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    platforms: Mapped[list[str]] = mapped_column(JSON)
    packages: Mapped[list[list[str]]] = mapped_column(JSON)
    # The manifest's dependencies: package name -> match spec.
    specs: Mapped[dict[str, str]] = mapped_column(JSON)
    manifest: Mapped[str] = mapped_column(Text)
    lockfile: Mapped[str] = mapped_column(Text)
    # How often its lock was installed again as is (a rebuild or a move), and when last.
    rebuild_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    rebuilt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Who made it, by name, read with it (None once that account is deleted).
    created_by_username: Mapped[str | None] = column_property(_username_of(created_by))


class InstalledPackage(Base):
    __tablename__ = "installed_packages"

    environment_id: Mapped[str] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    build: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(Text)


class Job(Base):
    """A queued or finished job. ``seq`` orders submission; ``id`` is the public UUID.

    ``claimed_by`` and ``lease_expires_at`` name the dispatcher running the job and
    until when its heartbeat vouches for it.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_seq", "status", "seq"),
        Index("ix_jobs_environment_seq", "environment_id", "seq"),
        # The active-jobs quota counts these on every submit: without the condition the
        # count would visit every job the owner ever ran (migration 0005).
        Index(
            "ix_jobs_owner_active",
            "owner_id",
            postgresql_where=text(ACTIVE_JOBS_CONDITION),
        ),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # The user who submitted the job (the owner, an editor or an admin).
    created_by: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The last progress the agent reported (``repo.progress``); kept once the job ended.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Who submitted it, by name, read with it (None once that account is deleted).
    created_by_username: Mapped[str | None] = column_property(_username_of(created_by))


class JobLogLine(Base):
    __tablename__ = "job_log_lines"

    # No foreign key: PostgreSQL would check it once per stored line (migration 0003).
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(String(8))
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    text: Mapped[str] = mapped_column(Text)


class Agent(Base):
    """The identity of each agent's data directory as last seen (``repo/agents.py``): a
    new one means the agent's disk was emptied or replaced."""

    __tablename__ = "agents"

    address: Mapped[str] = mapped_column(String(255), primary_key=True)
    data_id: Mapped[str] = mapped_column(String())
    # When this data_id was first seen.
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
