"""A running job's last progress report, kept in ``jobs.progress`` (JSON, migration 0010;
``Job.progress``) so that ``GetJob`` and ``WatchJob`` in any control plane process read
it with the job.

The dispatcher stores it throttled (``scheduling.progress``); the statement's commit
sends the "job changed" NOTIFY, so other processes' watchers re-read the job. A job that
ended keeps the last progress it reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text

from services.api.database.db import Database
from services.api.database.direct import Query

# darb.v1.JobPhase without its prefix; the agent's OperationPhase has the same numbers.
PHASES = ("UNSPECIFIED", "SOLVING", "DOWNLOADING", "LINKING", "WRITING_LOCK", "REMOVING")


@dataclass(frozen=True)
class Progress:
    """One report: ``phase`` is a name of ``PHASES``; ``time_ns`` when the agent's
    engine made it (Unix nanoseconds), which orders the reports of a job."""

    phase: str
    packages_done: int = 0
    packages_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    time_ns: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(**data)
        except TypeError:  # written by a different version: not worth failing a read
            return None


def phase_name(number: int) -> str:
    return PHASES[number] if 0 <= number < len(PHASES) else PHASES[0]


# Stored only while the job runs under the storing control plane, as its log lines are
# (``log_lines._OWNER``): no report lands after the job's end was recorded elsewhere.
STORE = Query(
    text(
        "WITH stored AS (UPDATE jobs SET progress = CAST(:progress AS JSON)"
        " WHERE id = :job_id AND status = 'RUNNING' AND claimed_by = :worker_id"
        " RETURNING id)"
        " SELECT pg_notify(:channel, :payload) FROM stored"
    )
)


async def store(
    database: Database, job_id: str, worker_id: str, progress: Progress, notify: tuple[str, str]
) -> bool:
    """Stores ``progress`` as the job's last, and sends NOTIFY ``notify`` = (channel,
    payload) with the same commit; False, storing nothing, once the job no longer runs
    under ``worker_id``."""
    channel, payload = notify
    row = await database.fetch_one(
        STORE,
        job_id=job_id,
        worker_id=worker_id,
        progress=json.dumps(asdict(progress)),
        channel=channel,
        payload=payload,
    )
    return row is not None
