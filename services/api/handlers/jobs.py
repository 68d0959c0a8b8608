"""JobService: job status, whole logs, live log streams and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

from sqlalchemy.orm import Session

from darb.v1 import jobs_pb2 as pb
from darb.v1 import jobs_pb2_grpc as pb_grpc
from services.api.handlers import convert, paging
from services.api.handlers import progress as job_progress
from services.api.handlers.rpc import streaming, unary
from services.api.ids import parse_id
from services.api.records import CANCELLED_BY_REQUEST, LineBatch, LineRow, Outcome
from services.api.repo import environments, jobs, log_lines
from services.api.repo.finishes import end_job
from services.api.repo.models import Job, JobStatus, Role, User
from services.api.repo.progress import Progress
from services.api.state import AppState
from shared.errors import InvalidArgument

# A watcher reads at most this many lines from the table at a time, so joining a long
# job late, or falling behind, costs bounded memory.
PAGE_LINES = 5000
# One WatchJob event carries at most this many lines and characters (with lines of at
# most DARB_MAX_LOG_LINE_BYTES, well under gRPC's 4 MiB message limit).
EVENT_LINES = 4096
EVENT_CHARS = 512 * 1024
# Events of this many recent batches are kept, so that all watchers of a job share one.
CACHED_BATCHES = 32


def _with_logs(session: Session, caller: User, job_id: str, logs: bool) -> tuple[Job, str]:
    job = jobs.get_visible(session, caller, job_id)
    return job, log_lines.log_text(session, job_id) if logs else ""


def _wants_logs(view: int) -> bool:
    """Whether a GetJob of this view returns the log (UNSPECIFIED: FULL)."""
    if view not in pb.JobView.values():
        raise InvalidArgument(f"unknown view {view}; use JOB_VIEW_BASIC or JOB_VIEW_FULL", "view")
    return view != pb.JOB_VIEW_BASIC


def _snapshot(session: Session, job_id: str, after_seq: int) -> tuple[Job, list[LineRow]]:
    """The job and its next lines after ``after_seq``, read in that order: once the job
    is seen terminal, every one of its lines is stored (they are stored before it ends),
    so a page shorter than ``PAGE_LINES`` holds all that are left."""
    return jobs.get(session, job_id), log_lines.lines_after(session, job_id, after_seq, PAGE_LINES)


def _chunks(rows: list[LineRow]) -> Iterator[list[LineRow]]:
    """``rows`` in runs of at most ``EVENT_LINES`` lines and ``EVENT_CHARS`` characters."""
    start, chars = 0, 0
    for index, row in enumerate(rows):
        chars += len(row.text)
        if index - start >= EVENT_LINES or (chars > EVENT_CHARS and index > start):
            yield rows[start:index]
            start, chars = index, len(row.text)
    if start < len(rows):
        yield rows[start:] if start else rows


def _list(
    session: Session, caller: User, environment_id: str | None, before: int | None, limit: int
) -> list[Job]:
    if environment_id is not None:
        environments.get_visible(session, caller, environment_id)
    return jobs.page(session, caller, environment_id, before, limit)


def _flag_cancel(session: Session, caller: User, job_id: str) -> None:
    jobs.request_cancel(jobs.get_visible(session, caller, job_id, Role.EDITOR))


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._events: OrderedDict[tuple[str, int, int, datetime], list[pb.WatchJobResponse]] = (
            OrderedDict()
        )

    def _line_events(self, job_id: str, rows: list[LineRow]) -> list[pb.WatchJobResponse]:
        """The events for consecutive lines, built once for every watcher that sends the
        same lines (a line's content never changes once it has its seq and time; log
        retention puts a new line 1, with the time it dropped the log, in place of them)."""
        key = (job_id, rows[0].seq, rows[-1].seq, rows[0].time)
        events = self._events.get(key)
        if events is None:
            if isinstance(rows, LineBatch) and rows.wire is not None:  # the agent's bytes
                event = pb.WatchJobResponse()
                event.log_lines.MergeFromString(rows.wire.SerializeToString())
                events = [event]
            else:
                events = [convert.watch_lines(chunk) for chunk in _chunks(rows)]
            self._events[key] = events
            if len(self._events) > CACHED_BATCHES:
                self._events.popitem(last=False)
        return events

    @unary()
    async def GetJob(self, request: pb.GetJobRequest, caller: User) -> pb.GetJobResponse:
        job_id, logs = parse_id(request.id, "id"), _wants_logs(request.view)
        job, text = await self.state.db.run(_with_logs, caller, job_id, logs)
        return pb.GetJobResponse(job=job_progress.fill(convert.job(job, text), job.progress))

    @unary()
    async def ListJobs(self, request: pb.ListJobsRequest, caller: User) -> pb.ListJobsResponse:
        environment_id = (
            parse_id(request.environment_id, "environment_id") if request.environment_id else None
        )
        size = paging.page_size(request.page_size)
        key = paging.decode(request.page_token, (int,))
        before = key[0] if key else None
        rows = await self.state.db.run(_list, caller, environment_id, before, size + 1)
        token = paging.encode([rows[size - 1].seq]) if len(rows) > size else ""
        return pb.ListJobsResponse(
            jobs=[convert.job(row) for row in rows[:size]], next_page_token=token
        )

    @streaming
    async def WatchJob(
        self, request: pb.WatchJobRequest, caller: User
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """Lines come from memory as the dispatcher publishes them (before they are
        stored) and from the table for what the watcher missed: lines published before
        it subscribed, or while it was too far behind. Batches are sent only when they
        continue the last seq sent, so every line goes out once and in order. Progress
        reports come the same two ways (see ``handlers.progress.to_send``)."""
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", "after_seq")
        job_id = parse_id(request.id, "id")
        db, poll = self.state.db, self.state.settings.poll_interval
        await db.run(jobs.get_visible, caller, job_id)
        # Subscribe before the first read: whatever is published after it is also announced.
        with self.state.bus.watch(job_id) as subscription:
            job, lines = await db.run(_snapshot, job_id, request.after_seq)
            read_all = len(lines) < PAGE_LINES
            status = job.status
            last_seq = request.after_seq
            sent_progress: Progress | None = None
            yield pb.WatchJobResponse(job=convert.job(job))
            batches, sent = [lines], False
            while True:
                held: list[list[LineRow]] = []  # batches past a gap
                for index, batch in enumerate(batches):
                    if not batch or batch[-1].seq <= last_seq:
                        continue
                    start = last_seq + 1 - batch[0].seq
                    if start < 0:
                        held = batches[index:]
                        break
                    for event in self._line_events(job_id, batch[start:] if start else batch):
                        yield event
                    last_seq, sent = batch[-1].seq, True
                published = subscription.take_progress()
                stored = Progress.from_json(job.progress)
                for report in job_progress.to_send(sent_progress, published, [stored]):
                    yield pb.WatchJobResponse(progress=job_progress.message(report))
                    sent_progress = report
                # The terminal status goes last: only once every line has been read.
                terminal = JobStatus(job.status).terminal
                ended = terminal and read_all
                if (ended and (sent or job.status != status)) or (
                    not terminal and job.status != status
                ):
                    status, sent = job.status, False
                    yield pb.WatchJobResponse(job=convert.job(job))
                if ended:
                    return
                if held and read_all:  # missed lines: wait until they can be read
                    subscription.gap_at = last_seq + 1
                    if subscription.stored <= last_seq:
                        subscription.stored_ready.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(subscription.stored_ready.wait(), poll)
                    subscription.gap_at = 0
                    taken: list[list[LineRow]] = []
                    stale = True
                elif read_all:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(subscription.ready.wait(), poll)
                    taken, stale = subscription.take()
                else:  # the last read filled a page: read on
                    taken, stale = [], True
                batches = held + taken
                if stale or not (batches or subscription.progress):  # progress: from memory
                    job, lines = await db.run(_snapshot, job_id, last_seq)
                    read_all = len(lines) < PAGE_LINES
                    batches.insert(0, lines)

    @unary()
    async def CancelJob(self, request: pb.CancelJobRequest, caller: User) -> pb.CancelJobResponse:
        job_id = parse_id(request.id, "id")
        db, bus = self.state.db, self.state.bus
        job = await db.run(jobs.get_visible, caller, job_id, Role.EDITOR)
        ended: list[str] = []
        if job.status == JobStatus.PENDING:
            outcome = Outcome(JobStatus.CANCELLED, CANCELLED_BY_REQUEST)
            ended_jobs = await end_job(db, bus, job_id, outcome, JobStatus.PENDING)
            self.state.jobs.ended(ended_jobs)
            ended = [ended_job.id for ended_job in ended_jobs]
            bus.jobs_ended_here(ended, job.environment_id)
        if not ended:  # running, or claimed since we looked
            await db.run(_flag_cancel, caller, job_id)
            await bus.cancel_requested(job_id)
        job = await db.run(jobs.get_visible, caller, job_id)
        return pb.CancelJobResponse(job=convert.job(job))
