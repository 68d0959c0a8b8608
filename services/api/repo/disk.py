"""What the disk features read and drop: live environments by owner and agent (usage,
metrics), and old jobs' log lines (log retention)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from services.api.repo.models import Environment, User

# What a job whose log was dropped by retention shows in its place: its one line.
DROPPED_LOG = "darb: this job's log was dropped after {days:g} days (DARB_LOG_RETENTION_DAYS)"
# Jobs whose lines one transaction drops: each holds at most DARB_MAX_LOG_LINES_PER_JOB
# lines, so a batch deletes a bounded number of rows and holds its locks briefly.
RETENTION_BATCH_JOBS = 100
# One control plane at a time drops logs (any other skips that round).
RETENTION_LOCK = 0x64617262_6C6F6773  # "darblogs"


@dataclass(frozen=True)
class LiveEnvironment:
    id: str
    owner_id: str
    username: str
    executor: str


def live_environments(session: Session) -> list[LiveEnvironment]:
    query = (
        select(Environment.id, Environment.owner_id, User.username, Environment.executor)
        .join(User, User.id == Environment.owner_id)
        .where(Environment.deleted_at.is_(None))
        .order_by(User.username, Environment.id)
    )
    return [LiveEnvironment(*row) for row in session.execute(query)]


def environment_counts(session: Session) -> dict[tuple[str, str], int]:
    """Live environments by (agent, status), for the metrics."""
    query = (
        select(Environment.executor, Environment.status, func.count())
        .where(Environment.deleted_at.is_(None))
        .group_by(Environment.executor, Environment.status)
    )
    return {(executor, status): count for executor, status, count in session.execute(query)}


# Jobs that ended before the cutoff and still hold lines other than the marker (seq 1 is
# the marker once dropped: any line past it, or a first line that is not the marker), in
# submission order from ``after``: the primary key's index, so one round is one pass over
# the jobs however many there are, and each job costs a probe of its lines' key.
_OLD_LOGS = text(
    "SELECT j.seq, j.id FROM jobs j"
    " WHERE j.seq > :after AND j.completed_at < :cutoff"
    " AND j.status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
    " AND EXISTS (SELECT 1 FROM job_log_lines l WHERE l.job_id = j.id"
    " AND (l.seq > 1 OR l.text <> :marker))"
    " ORDER BY j.seq LIMIT :batch"
)
_DROP = text("DELETE FROM job_log_lines WHERE job_id = ANY(CAST(:ids AS VARCHAR[]))")
_MARK = text(
    "INSERT INTO job_log_lines (job_id, seq, stream, time, text)"
    " SELECT id, 1, 'stdout', now(), :marker FROM unnest(CAST(:ids AS VARCHAR[])) AS id"
    " ON CONFLICT DO NOTHING"
)


def drop_old_logs(
    session: Session, cutoff: datetime, days: float, after: int
) -> tuple[int, int] | None:
    """One batch: the lines of up to ``RETENTION_BATCH_JOBS`` jobs past job ``seq``
    ``after`` that ended before ``cutoff`` give way to one line saying so. (jobs dropped,
    the last one's seq), (0, after) when none is left, or None when another control
    plane is dropping logs right now."""
    locked = session.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RETENTION_LOCK}
    )
    if not locked.scalar_one():
        return None
    marker = DROPPED_LOG.format(days=days)
    params = {"after": after, "cutoff": cutoff, "marker": marker, "batch": RETENTION_BATCH_JOBS}
    rows = session.execute(_OLD_LOGS, params).all()
    if not rows:
        return 0, after
    ids = [job_id for _, job_id in rows]
    session.execute(_DROP, {"ids": ids})
    session.execute(_MARK, {"ids": ids, "marker": marker})
    return len(ids), rows[-1][0]
