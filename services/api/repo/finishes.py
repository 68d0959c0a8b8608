"""A job's end on PostgreSQL as one call of ``darb_finish_job`` (migration 0007): the
job's and its environment's rows, the installed packages, the jobs queued behind a
failed create and the NOTIFYs, in one statement and one round trip."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from services.api.direct import Query
from services.api.events import JOB_CHANGED_CHANNEL, JOBS_CHANNEL
from services.api.models import JobStatus

if TYPE_CHECKING:
    from services.api.events import EventBus
    from services.api.outcomes import Outcome

_PARAMETERS = (
    *("job_id", "expected", "worker_id", "status", "error", "now", "has_state"),
    *("manifest", "lockfile", "names", "versions", "builds", "channels"),
    *("job_channel", "jobs_channel", "notify_prefix"),
)
# One row per ended job, in the order of ``outcomes.EndedJob``'s fields.
FINISH_JOB = Query(
    text(
        "SELECT o_id, o_environment_id, o_type, o_status, o_error, o_agent, o_started_at,"
        " o_completed_at FROM darb_finish_job("
        + ", ".join(f":{name}" for name in _PARAMETERS)
        + ")"
    )
)


def params(
    job_id: str,
    outcome: Outcome,
    expected: JobStatus,
    worker_id: str | None,
    now: datetime,
    bus: EventBus,
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
        "now": now,
        "has_state": state is not None,
        "manifest": state.manifest if state is not None else "",
        "lockfile": state.lockfile if state is not None else "",
        "names": [package.name for package in packages],
        "versions": [package.version for package in packages],
        "builds": [package.build for package in packages],
        "channels": [package.channel for package in packages],
        "job_channel": job_channel,
        "jobs_channel": jobs_channel,
        "notify_prefix": prefix,
    }
