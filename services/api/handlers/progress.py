"""Jobs' progress on the wire: ``darb.v1.JobProgress`` from the stored or relayed
reports, and which of them a watcher has still to be sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from darb.v1 import common_pb2 as pb
from services.api.repo.progress import Progress
from shared.timestamps import from_nanoseconds


def message(progress: Progress) -> pb.JobProgress:
    return pb.JobProgress(
        phase=f"JOB_PHASE_{progress.phase}",
        packages_done=progress.packages_done,
        packages_total=progress.packages_total,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
        time=from_nanoseconds(progress.time_ns),
    )


def fill(job: pb.Job, stored: dict[str, Any] | None) -> pb.Job:
    """``job`` with its last progress (GetJob), from the row's ``progress`` column."""
    progress = Progress.from_json(stored)
    if progress is not None:
        job.progress.CopyFrom(message(progress))
    return job


def to_send(sent: Progress | None, *sources: Iterable[Progress | None]) -> list[Progress]:
    """The reports of ``sources`` (published in this process, read from the table) made
    after ``sent``, the last one sent, oldest first: each report goes out once, and a
    stored one older than what this process already relayed not at all."""
    after = sent.time_ns if sent is not None else -1
    reports = sorted(
        {report for source in sources for report in source if report is not None},
        key=lambda report: report.time_ns,
    )
    return [report for report in reports if report.time_ns > after]
