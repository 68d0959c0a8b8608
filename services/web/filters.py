"""How values read on the pages: the Jinja environment of ``templates/`` and its filters
(times, and the names of statuses, roles and phases)."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf.timestamp_pb2 import Timestamp

from darb.v1 import common_pb2

HERE = Path(__file__).resolve().parent


def _time(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).isoformat()


def _enum(value: int, enum: Any, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unknown"
    return name.removeprefix(prefix).replace("_", " ").lower()


def env_status(value: int) -> str:
    return _enum(value, common_pb2.EnvironmentStatus, "ENVIRONMENT_STATUS_")


def job_status(value: int) -> str:
    return _enum(value, common_pb2.JobStatus, "JOB_STATUS_")


def job_type(value: int) -> str:
    return _enum(value, common_pb2.JobType, "JOB_TYPE_")


def role_name(value: int) -> str:
    return "" if value == common_pb2.ROLE_UNSPECIFIED else _enum(value, common_pb2.Role, "ROLE_")


def my_role(env: common_pb2.Environment, user: common_pb2.User) -> str:
    """The caller's role on ``env`` as the pages show it. The control plane gives an admin
    OWNER on every environment, so an admin reads "admin" where they are not the owner."""
    if env.owner_id == user.id:
        return "owner"
    if user.admin:
        return "admin"
    return role_name(env.role) or "none"


def phase_name(value: int) -> str:
    return _enum(value, common_pb2.JobPhase, "JOB_PHASE_")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=_time,
        iso=iso,
        env_status=env_status,
        job_status=job_status,
        job_type=job_type,
        role=role_name,
        my_role=my_role,
        phase=phase_name,
        short=lambda value: str(value)[:8],
    )
    return env
