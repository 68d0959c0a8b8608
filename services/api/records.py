"""Value types that the control plane's layers hand each other: no I/O, no SQL.

A job's end (``Outcome`` in, ``EndedJob`` out), a claimed job, and log lines as they
travel from the agent to storage and to watchers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from services.api import payloads
from services.api.repo.models import JobStatus

# The error of a job ended by CancelJob.
CANCELLED_BY_REQUEST = "cancelled by request"


@dataclass(frozen=True)
class PackageRow:
    name: str
    version: str
    build: str
    channel: str


@dataclass(frozen=True)
class AgentState:
    """The environment as the agent reported it after an operation: the host platform's
    packages, the two files, the lock's content hash and its platforms."""

    packages: list[PackageRow] = field(default_factory=list)
    manifest: str = ""
    lockfile: str = ""
    content_hash: str = ""
    platforms: list[str] = field(default_factory=list)
    # The manifest's dependencies: package name -> match spec.
    specs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    error: str = ""
    # None when the agent did not report the environment (it is then left as stored).
    state: AgentState | None = None
    # What a successful job did, for the version it adds ("installed acme-extras").
    description: str = ""


@dataclass(frozen=True)
class LockToApply:
    """An agent's ApplyLock: the manifest's fields and the lock installed as is."""

    name: str
    channels: list[str]
    platforms: list[str]
    packages: list[str]
    lockfile: str


@dataclass(frozen=True)
class EndedJob:
    """A job as its end left it: what its watchers, metrics and log line need."""

    id: str
    environment_id: str
    type: str
    status: str
    error: str
    agent: str
    started_at: datetime | None
    completed_at: datetime | None


@dataclass(frozen=True)
class ClaimedJob:
    """What a dispatcher needs to run a job, read in the claiming statement."""

    id: str
    type: str
    environment_id: str
    environment_name: str
    executor: str
    payload: payloads.Payload
    queued_seconds: float  # from submission to this claim
    fence: int = 0  # the environment's fencing token this claim gave it


class LineRow(NamedTuple):
    """One stored log line; a tuple because a flood makes hundreds of thousands."""

    seq: int
    stream: str
    time: datetime
    text: str


class LineBatch(list[LineRow]):
    """Consecutive lines as the dispatcher publishes them to watchers. ``wire``, when
    set, is a protobuf message that serializes to exactly these lines as a ``LogLines``
    (the agent's own message: same seqs, streams, texts and times), so a WatchJob event
    is made by re-reading its bytes instead of building it line by line."""

    __slots__ = ("wire",)

    def __init__(self, rows: list[LineRow], wire: Any = None) -> None:
        super().__init__(rows)
        self.wire = wire
