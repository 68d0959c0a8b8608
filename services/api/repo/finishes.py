"""A job's end as one call of ``darb_finish_job`` (``repo/schema.sql``): the job's and
its environment's rows, the installed packages, the jobs queued behind a failed create
and the NOTIFYs, in one statement and one round trip."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, bindparam, text

from services.api.database.db import Database
from services.api.database.direct import Query
from services.api.events import JOB_CHANGED_CHANNEL, JOBS_CHANNEL, EventBus
from services.api.records import EndedJob, Outcome
from services.api.repo.models import JobStatus

_PARAMETERS = (
    *("job_id", "expected", "worker_id", "status", "error", "has_state"),
    *("manifest", "lockfile", "names", "versions", "builds", "channels"),
    *("description", "content_hash", "platforms", "specs"),
    *("job_channel", "jobs_channel", "notify_prefix"),
)
# One row per ended job, in the order of ``EndedJob``'s fields.
FINISH_JOB = Query(
    text(
        "SELECT o_id, o_environment_id, o_type, o_status, o_error, o_agent, o_started_at,"
        " o_completed_at FROM darb_finish_job("
        + ", ".join(f":{name}" for name in _PARAMETERS)
        + ")"
    ).bindparams(bindparam("platforms", type_=JSON), bindparam("specs", type_=JSON))
)


async def end_job(
    database: Database,
    bus: EventBus,
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None = None,
) -> list[EndedJob]:
    """Ends a job if it is still ``expected`` (and, given ``worker_id``, still claimed by
    that worker), in a transaction of its own whose commit also tells the other processes
    (NOTIFY). Returns every job that ended: this one and, after a failed create, those
    queued behind it. The caller tells this process (``bus.jobs_ended_here``)."""
    values = _params(job_id, outcome, expected, worker_id, bus)
    return [EndedJob(*row) for row in await database.fetch_all(FINISH_JOB, **values)]


def _params(
    job_id: str, outcome: Outcome, expected: JobStatus, worker_id: str | None, bus: EventBus
) -> dict[str, Any]:
    state = outcome.state
    packages = state.packages if state is not None else []
    job_channel, prefix = bus.notify_target(JOB_CHANGED_CHANNEL)
    jobs_channel, _ = bus.notify_target(JOBS_CHANNEL)
    return {
        "job_id": job_id,
        "expected": expected,
        "worker_id": worker_id,
        "status": outcome.status,
        "error": outcome.error,
        "has_state": state is not None,
        "manifest": state.manifest if state is not None else "",
        "lockfile": state.lockfile if state is not None else "",
        "names": [package.name for package in packages],
        "versions": [package.version for package in packages],
        "builds": [package.build for package in packages],
        "channels": [package.channel for package in packages],
        "description": outcome.description,
        "content_hash": state.content_hash if state is not None else "",
        "platforms": state.platforms if state is not None else [],
        "specs": state.specs if state is not None else {},
        "job_channel": job_channel,
        "jobs_channel": jobs_channel,
        "notify_prefix": prefix,
    }
