"""A create as one call of ``darb_create_environment`` (``repo/schema.sql``):
the owner's lock, the quota counts, the environment's row, its create job and the
NOTIFY that wakes the dispatchers, in one statement and one round trip."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, bindparam, text

from services.api.database.db import Database
from services.api.database.direct import Query, UniqueViolation
from services.api.repo import environments, quotas
from services.api.repo.models import Environment, Job
from shared.config import ApiLimits

_PARAMETERS = (
    *("owner_id", "max_environments", "max_active_jobs", "environment_id", "name"),
    *("package_manager", "channels", "executor", "environment_status"),
    *("job_id", "job_type", "job_status", "payload", "notify_channel", "notify_payload"),
)
# One row: the owner's counts before, whether the rows went in (only if both fit) and
# when (the database's clock).
CREATE_ENVIRONMENT = Query(
    text(
        "SELECT o_environments AS environments, o_active_jobs AS active_jobs,"
        " o_created AS created, o_created_at AS created_at FROM darb_create_environment("
        + ", ".join(f":{name}" for name in _PARAMETERS)
        + ")"
    ).bindparams(bindparam("channels", type_=JSON), bindparam("payload", type_=JSON))
)


async def create_environment(
    database: Database,
    environment: Environment,
    job: Job,
    limits: ApiLimits,
    notify: tuple[str, str],
) -> None:
    """Inserts a new environment and its create job, unless a quota of the owner or the
    name's uniqueness forbids it (``ResourceExhausted``, ``AlreadyExists``); NOTIFY
    ``notify`` = (channel, payload) wakes the dispatchers. Both rows get the database's
    time as ``created_at``."""
    try:
        counts = await database.fetch_one(
            CREATE_ENVIRONMENT, **_params(environment, job, limits, notify)
        )
    except UniqueViolation as exc:
        raise environments.already_exists(environment.name) from exc
    quotas.refuse_new_environment(counts, limits)
    if not counts.created:  # the counts fit, so only a bug of the function gets here
        raise RuntimeError("darb_create_environment inserted nothing")
    environment.created_at = environment.updated_at = job.created_at = counts.created_at


def _params(
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
        "job_id": job.id,
        "job_type": job.type,
        "job_status": job.status,
        "payload": job.payload,
        "notify_channel": channel,
        "notify_payload": payload,
    }
