"""A job's log lines: stored a batch at a time (with the NOTIFY that tells other
processes), read back in order."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from services.api.database.db import Database
from services.api.database.direct import Query
from services.api.records import LineRow
from services.api.repo.models import JobLogLine

# COPY's text format: these characters of a value are written as escapes.
# NUL, which no PostgreSQL text can hold, becomes U+FFFD (the agent already replaces it;
# this keeps a line that still has one from failing its batch forever).
_NUL = "\0"
_NO_NUL = str.maketrans({_NUL: "\ufffd"})
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", _NUL: "\ufffd"})
_COPY_LINES = "COPY job_log_lines (job_id, seq, stream, time, text) FROM STDIN"


# A job's lines are stored only while it runs under the control plane storing them: one
# whose lease ran out (it stalled, and another control plane failed the job) must not
# add lines after the job's end. FOR SHARE makes an end being recorded wait for the
# store, or the store for the end (which it then sees).
_OWNER = (
    "SELECT 1 FROM jobs WHERE id = :job_id AND status = 'RUNNING' AND claimed_by = :worker_id"
    " FOR SHARE"
)

# A job's usual trickle of lines: stored, with the NOTIFY, by one statement in one round
# trip (its own transaction); no row when the job is not the caller's. A flood goes
# through COPY, which costs less per line.
INSERT_LINES_AND_NOTIFY = Query(
    text(
        f"WITH owner AS ({_OWNER}),"
        " stored AS (INSERT INTO job_log_lines (job_id, seq, stream, time, text)"
        " SELECT :job_id, lines.* FROM owner, unnest(CAST(:seqs AS BIGINT[]),"
        " CAST(:streams AS VARCHAR[]), CAST(:times AS TIMESTAMPTZ[]), CAST(:texts AS TEXT[]))"
        " AS lines)"
        " SELECT pg_notify(:channel, :payload) FROM owner"
    )
)
# The same check before a COPY, in psycopg's placeholders.
_COPY_OWNER = _OWNER.replace(":job_id", "%(job_id)s").replace(":worker_id", "%(worker_id)s")
COPY_FROM_LINES = 500


async def store_lines(
    database: Database, job_id: str, worker_id: str, lines: list[LineRow], notify: tuple[str, str]
) -> bool:
    """Stores consecutive lines in one statement, whose commit also sends NOTIFY
    ``notify`` = (channel, payload). Never one ORM object per line: a job may print a
    flood. False, storing nothing, once the job no longer runs under ``worker_id``."""
    if not lines:
        return True
    channel, payload = notify
    owner = {"job_id": job_id, "worker_id": worker_id}
    if len(lines) < COPY_FROM_LINES:
        seqs, streams, times, texts = zip(*lines, strict=True)
        if _NUL in "".join(texts):
            texts = tuple(text.translate(_NO_NUL) for text in texts)
        columns = {"seqs": list(seqs), "streams": list(streams), "times": list(times)}
        notice = {"channel": channel, "payload": payload}
        row = await database.fetch_one(
            INSERT_LINES_AND_NOTIFY, **owner, **columns, texts=list(texts), **notice
        )
        return row is not None
    async with database.transaction() as conn:
        if await (await conn.execute(_COPY_OWNER, owner)).fetchone() is None:
            return False
        async with conn.cursor() as cursor, cursor.copy(_COPY_LINES) as copy:
            await copy.write(_copy_data(job_id, lines))
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    return True


def _copy_data(job_id: str, lines: list[LineRow]) -> bytes:
    """The lines in COPY's text format. Lines read together share their time, so its
    text is made once per time, not once per line."""
    texts = [line.text for line in lines]
    joined = "".join(texts)
    if any(char in joined for char in "\\\t\n\r\0"):
        texts = [line_text.translate(_COPY_ESCAPES) for line_text in texts]
    out, stamped, stamp = [], None, ""
    for line, line_text in zip(lines, texts, strict=True):
        if line.time != stamped:
            stamped, stamp = line.time, line.time.isoformat()
        out.append(f"{job_id}\t{line.seq}\t{line.stream}\t{stamp}\t{line_text}\n")
    return "".join(out).encode("utf-8", errors="replace")


def lines_after(
    session: Session, job_id: str, after_seq: int, limit: int | None = None
) -> list[LineRow]:
    """Lines with seq > ``after_seq`` in order, at most ``limit`` of them."""
    query = (
        select(JobLogLine.seq, JobLogLine.stream, JobLogLine.time, JobLogLine.text)
        .where(JobLogLine.job_id == job_id, JobLogLine.seq > after_seq)
        .order_by(JobLogLine.seq)
        .limit(limit)
    )
    return [LineRow(*row) for row in session.execute(query)]


def log_text(session: Session, job_id: str) -> str:
    query = select(JobLogLine.text).where(JobLogLine.job_id == job_id).order_by(JobLogLine.seq)
    return "\n".join(session.scalars(query))
