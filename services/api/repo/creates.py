"""A create on PostgreSQL as one call of ``darb_create_environment`` (migration 0006):
the owner's lock, the quota counts, the environment's row, its create job and the
NOTIFY that wakes the dispatchers, in one statement and one round trip."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, bindparam, text

from services.api.direct import Query
from services.api.models import Environment, Job
from shared.config import ApiLimits

_PARAMETERS = (
    *("owner_id", "max_environments", "max_active_jobs", "environment_id", "name"),
    *("package_manager", "channels", "executor", "environment_status", "created_at"),
    *("job_id", "job_type", "job_status", "payload", "notify_channel", "notify_payload"),
)
# One row: the owner's counts before, and whether the rows went in (only if both fit).
CREATE_ENVIRONMENT = Query(
    text(
        "SELECT o_environments AS environments, o_active_jobs AS active_jobs,"
        " o_created AS created FROM darb_create_environment("
        + ", ".join(f":{name}" for name in _PARAMETERS)
        + ")"
    ).bindparams(bindparam("channels", type_=JSON), bindparam("payload", type_=JSON))
)


def params(
    environment: Environment, job: Job, limits: ApiLimits, notify: tuple[str, str]
) -> dict[str, Any]:
    channel, payload = notify
    return {
        "owner_id": environment.owner_id,
        "max_environments": limits.max_environments_per_user,
        "max_active_jobs": limits.max_active_jobs_per_user,
        "environment_id": environment.id,
        "name": environment.name,
        "package_manager": environment.package_manager,
        "channels": environment.channels,
        "executor": environment.executor,
        "environment_status": environment.status,
        "created_at": environment.created_at,
        "job_id": job.id,
        "job_type": job.type,
        "job_status": job.status,
        "payload": job.payload,
        "notify_channel": channel,
        "notify_payload": payload,
    }
