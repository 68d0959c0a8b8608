"""Rows to protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from darb.v1 import common_pb2 as pb
from darb.v1 import environments_pb2, jobs_pb2
from services.api import payloads
from services.api.diffs import VersionDiff
from services.api.records import LineRow, PackageRow
from services.api.repo.models import Environment, EnvironmentVersion, Job, Role, User
from shared.timestamps import from_datetime


def timestamp(value: datetime | None) -> Timestamp | None:
    return None if value is None else from_datetime(value)


def user(row: User) -> pb.User:
    return pb.User(
        id=row.id,
        username=row.username,
        admin=row.is_admin,
        created_at=timestamp(row.created_at),
        disabled=row.disabled,
    )


def environment(row: Environment | Any, owner: str, role: int) -> pb.Environment:
    """An environment's summary; ``owner`` is the owner's username, ``role`` the
    caller's (darb.v1.Role's number)."""
    return pb.Environment(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        package_manager=row.package_manager,
        channels=row.channels,
        status=f"ENVIRONMENT_STATUS_{row.status}",
        error=row.error,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        current_version=row.current_version,
        platforms=row.platforms,
        owner=owner,
        role=f"ROLE_{Role(role).name}" if role else "ROLE_UNSPECIFIED",
    )


def job(row: Job, logs: str = "", created_by_username: str | None = None) -> pb.Job:
    """A job; ``created_by_username`` for one not read from the database (just queued)."""
    if created_by_username is None:
        created_by_username = row.created_by_username or ""
    return pb.Job(
        id=row.id,
        type=f"JOB_TYPE_{row.type}",
        status=f"JOB_STATUS_{row.status}",
        environment_id=row.environment_id,
        error=row.error,
        logs=logs,
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        completed_at=timestamp(row.completed_at),
        packages=payloads.packages_of(payloads.load(row.type, row.payload)),
        created_by=row.created_by,
        created_by_username=created_by_username,
    )


def package(row: PackageRow) -> pb.Package:
    return pb.Package(name=row.name, version=row.version, build=row.build, channel=row.channel)


def version(row: EnvironmentVersion, texts: bool = False) -> environments_pb2.EnvironmentVersion:
    """A version; its manifest and lock only with ``texts``."""
    message = environments_pb2.EnvironmentVersion(
        environment_id=row.environment_id,
        version=row.version,
        job_id=row.job_id,
        created_by=row.created_by,
        created_by_username=row.created_by_username or "",
        created_at=timestamp(row.created_at),
        description=row.description,
        content_hash=row.content_hash,
        packages=[package(PackageRow(*values)) for values in row.packages],
        platforms=row.platforms,
        rebuild_count=row.rebuild_count,
        rebuilt_at=timestamp(row.rebuilt_at),
    )
    if texts:
        message.manifest, message.lockfile = row.manifest, row.lockfile
    return message


def version_diff(result: VersionDiff) -> environments_pb2.DiffEnvironmentVersionsResponse:
    return environments_pb2.DiffEnvironmentVersionsResponse(
        added=[package(row) for row in result.added],
        removed=[package(row) for row in result.removed],
        changed=[environments_pb2.PackageChange(**vars(change)) for change in result.changed],
        requested_added=[
            environments_pb2.RequestedSpec(name=name, spec=spec)
            for name, spec in result.requested_added
        ],
        requested_removed=[
            environments_pb2.RequestedSpec(name=name, spec=spec)
            for name, spec in result.requested_removed
        ],
        requested_changed=[
            environments_pb2.RequestedSpecChange(name=name, from_spec=old, to_spec=new)
            for name, old, new in result.requested_changed
        ],
    )


STREAMS = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}


def watch_lines(rows: Sequence[LineRow]) -> jobs_pb2.WatchJobResponse:
    """One WatchJob event for consecutive lines. Built in place (a message per line that
    is then copied in costs several times more); lines read together share their time,
    whose Timestamp is made once."""
    event = jobs_pb2.WatchJobResponse()
    add = event.log_lines.lines.add
    stamped: datetime | None = None
    stamp = Timestamp()
    for seq, stream, time, text in rows:
        if time != stamped:
            stamped, stamp = time, from_datetime(time)
        add(seq=seq, stream=STREAMS.get(stream, 0), text=text, time=stamp)
    return event
