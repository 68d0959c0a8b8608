"""Fencing tokens (``scheduling/takeover.py``, ``services/executor/fencing.py``).

Tokens come from one database sequence, ``darb_fence_tokens`` (``schema.sql``): every
claim of a job takes one (in the claim's statement, ``jobs.py``), and so does every
takeover of a job whose lease expired. The tokens an environment's claims and takeovers
get therefore grow, which is all the agent needs: it compares them per environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import extract, func, select
from sqlalchemy.orm import Session

from services.api import payloads
from services.api.repo.models import Environment, Job, JobStatus

SEQUENCE = "darb_fence_tokens"


def next_token() -> Any:
    """A new fencing token, larger than every one handed out before."""
    return func.nextval(SEQUENCE)


@dataclass(frozen=True)
class ExpiredJob:
    """A running job whose lease ran out, with what its environment's row says."""

    id: str
    environment_id: str
    type: str
    payload: payloads.Payload
    executor: str
    manifest: str
    lockfile: str
    overdue_seconds: float  # since its lease ran out


def expired(session: Session) -> list[ExpiredJob]:
    """Running jobs whose dispatcher stopped renewing the lease, oldest first."""
    overdue = extract("epoch", func.now() - Job.lease_expires_at)
    query = (
        select(
            *(Job.id, Job.environment_id, Job.type, Job.payload),
            *(Environment.executor, Environment.manifest, Environment.lockfile, overdue),
        )
        .join(Environment, Environment.id == Job.environment_id)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < func.now())
        .order_by(Job.seq)
    )
    return [
        ExpiredJob(
            *(row[0], row[1], row[2], payloads.load(row[2], row[3])),
            *(row[4], row[5], row[6], float(row[7])),
        )
        for row in session.execute(query)
    ]


def takeover_token(session: Session, job_id: str) -> int | None:
    """A new fencing token for taking the job over, if it still runs under an expired
    lease; None when it ended or its control plane came back and renewed the lease."""
    query = select(next_token()).where(
        Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < func.now()
    )
    token = session.execute(query).scalar_one_or_none()
    return None if token is None else int(token)
