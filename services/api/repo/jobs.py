"""The job queue: submit, claim, heartbeat, cancel, and the job's log lines."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ScalarSelect,
    Select,
    Update,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from services.api import payloads
from services.api.database.direct import Query
from services.api.errors import FailedPrecondition, NotFound
from services.api.ids import new_id
from services.api.models import (
    Environment,
    EnvironmentStatus,
    Job,
    JobLogLine,
    JobStatus,
    User,
    is_active,
)
from services.api.records import ClaimedJob, LineRow

if TYPE_CHECKING:
    from services.api.database.db import Database


# The columns a new job is given; the others have defaults or are set later.
_NEW_COLUMNS = (
    *("id", "environment_id", "owner_id", "type", "status", "payload", "error"),
    "cancel_requested",
)


def new(environment_id: str, owner_id: str, payload: payloads.Payload) -> Job:
    """A PENDING job not yet stored (``submit``, or ``darb_create_environment`` for a
    create, inserts it and stamps its ``created_at``)."""
    return Job(
        id=new_id(),
        environment_id=environment_id,
        owner_id=owner_id,
        type=payloads.job_type_of(payload),
        status=JobStatus.PENDING,
        payload=payloads.dump(payload),
        error="",
        cancel_requested=False,
    )


def submit(session: Session, environment: Environment, payload: payloads.Payload) -> Job:
    """Inserts a new job with one Core INSERT (the ORM's unit of work would cost several
    times as much), stamped with the database's clock."""
    job = new(environment.id, environment.owner_id, payload)
    values = {name: getattr(job, name) for name in _NEW_COLUMNS}
    statement = insert(Job).values(**values, created_at=func.now()).returning(Job.created_at)
    job.created_at = session.execute(statement).scalar_one()
    return job


def _claimable() -> ScalarSelect[int]:
    """The seq of the oldest pending job that is first in its environment's queue.
    Concurrent dispatchers skip rows another one has locked.
    """
    earlier = aliased(Job)
    blocked = exists().where(
        earlier.environment_id == Job.environment_id,
        earlier.seq < Job.seq,
        is_active(earlier.status),
    )
    query = select(Job.seq).where(Job.status == JobStatus.PENDING, ~blocked)
    query = query.order_by(Job.seq).limit(1).with_for_update(skip_locked=True, of=Job)
    return query.scalar_subquery()


def _claim() -> Update:
    """Marks the job of ``_claimable`` RUNNING under a lease; parameters: worker,
    lease (seconds)."""
    return (
        update(Job)
        .where(Job.seq == _claimable())
        .values(
            status=JobStatus.RUNNING,
            claimed_by=bindparam("worker"),
            started_at=func.now(),
            lease_expires_at=_lease_until(),
        )
        .returning(
            *(Job.id, Job.type, Job.payload, Job.environment_id),
            *(Job.created_at, Job.started_at),
        )
    )


def _lease_until() -> Any:
    """The database's clock plus the ``lease`` parameter's seconds."""
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("lease"))


def _start_environment(environment_id: Any) -> Update:
    """A PENDING environment's first job is its create: it is CREATING from now on."""
    pending = Environment.status == EnvironmentStatus.PENDING
    return (
        update(Environment)
        .where(Environment.id == environment_id)
        .values(
            status=case((pending, EnvironmentStatus.CREATING), else_=Environment.status),
            updated_at=case((pending, func.now()), else_=Environment.updated_at),
        )
        .returning(Environment.id, Environment.name, Environment.executor)
    )


def _claim_in_one_statement() -> Select[Any]:
    """The claim, the environment's update and the NOTIFY (parameters channel, origin)
    as one statement, so one round trip with no BEGIN or COMMIT."""
    claimed = _claim().cte("claimed")
    started = _start_environment(claimed.c.environment_id).cte("started")
    notify = func.pg_notify(bindparam("channel"), bindparam("origin") + claimed.c.id)
    return select(
        *(claimed.c.id, claimed.c.type, claimed.c.payload, claimed.c.environment_id),
        *(claimed.c.created_at, claimed.c.started_at, started.c.name, started.c.executor),
        notify,
    ).join_from(claimed, started, started.c.id == claimed.c.environment_id)


CLAIM = Query(_claim_in_one_statement())


async def claim_next(
    database: Database, worker_id: str, lease: timedelta, notify: tuple[str, str]
) -> ClaimedJob | None:
    """Marks the next claimable job RUNNING under ``worker_id``'s lease and sends NOTIFY
    on ``notify`` = (channel, payload prefix) with its id."""
    channel, origin = notify
    job = await database.fetch_one(
        CLAIM, worker=worker_id, lease=lease.total_seconds(), channel=channel, origin=origin
    )
    if job is None:
        return None
    return ClaimedJob(
        id=job.id,
        type=job.type,
        environment_id=job.environment_id,
        environment_name=job.name,
        executor=job.executor,
        payload=payloads.load(job.type, job.payload),
        queued_seconds=max((job.started_at - job.created_at).total_seconds(), 0.0),
    )


def heartbeat(session: Session, job_id: str, worker_id: str, lease: timedelta) -> bool | None:
    """Extends the lease; returns whether a cancel was requested, None if no longer ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == worker_id, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=func.now() + lease)
        .returning(Job.cancel_requested)
    ).first()
    return None if result is None else bool(result[0])


def get(session: Session, job_id: str) -> Job:
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def get_visible(session: Session, caller: User, job_id: str) -> Job:
    """A job of the caller's (any, for admins); NotFound otherwise."""
    query = select(Job).where(Job.id == job_id)
    if not caller.is_admin:
        query = query.where(Job.owner_id == caller.id)
    job = session.scalars(query).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def page(
    session: Session, caller: User, environment_id: str | None, before_seq: int | None, limit: int
) -> list[Job]:
    """Jobs newest first, below ``before_seq`` when given."""
    query = select(Job)
    if not caller.is_admin:
        query = query.where(Job.owner_id == caller.id)
    if environment_id is not None:
        query = query.where(Job.environment_id == environment_id)
    if before_seq is not None:
        query = query.where(Job.seq < before_seq)
    return list(session.scalars(query.order_by(Job.seq.desc()).limit(limit)))


def request_cancel(session: Session, job: Job) -> None:
    """Flags a running job; the dispatcher running it stops it. Pending jobs are ended
    by ``outcomes.finish`` instead, so that their environment is updated with them."""
    if JobStatus(job.status).terminal:
        raise FailedPrecondition(f"job {job.id} has already ended ({job.status})")
    job.cancel_requested = True


def expired(session: Session) -> list[str]:
    """Running jobs whose dispatcher stopped renewing the lease."""
    query = select(Job.id).where(
        Job.status == JobStatus.RUNNING, Job.lease_expires_at < func.now()
    )
    return list(session.scalars(query))


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
