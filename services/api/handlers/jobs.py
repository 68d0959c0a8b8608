"""JobService: job status, whole logs, live log streams and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.orm import Session

from darb.v1 import jobs_pb2 as pb
from darb.v1 import jobs_pb2_grpc as pb_grpc
from services.api import convert, paging
from services.api.dispatcher import CANCELLED_BY_REQUEST
from services.api.errors import InvalidArgument
from services.api.ids import parse_id
from services.api.models import Job, JobStatus, User
from services.api.outcomes import Outcome, finish
from services.api.repo import environments, jobs
from services.api.repo.jobs import LineRow
from services.api.rpc import streaming, unary
from services.api.state import AppState


def _with_logs(session: Session, caller: User, job_id: str) -> tuple[Job, str]:
    job = jobs.get_visible(session, caller, job_id)
    return job, jobs.log_text(session, job_id)


def _snapshot(session: Session, job_id: str, after_seq: int) -> tuple[Job, list[LineRow]]:
    """The job and its lines after ``after_seq``, read together: once the job is seen
    terminal, every one of its lines is in the list (they are stored before it ends)."""
    return jobs.get(session, job_id), jobs.lines_after(session, job_id, after_seq)


def _list(
    session: Session, caller: User, environment_id: str | None, before: int | None, limit: int
) -> list[Job]:
    if environment_id is not None:
        environments.get_visible(session, caller, environment_id)
    return jobs.page(session, caller, environment_id, before, limit)


def _flag_cancel(session: Session, caller: User, job_id: str) -> None:
    jobs.request_cancel(session, jobs.get_visible(session, caller, job_id))


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    @unary()
    async def GetJob(self, request: pb.GetJobRequest, caller: User) -> pb.GetJobResponse:
        job, logs = await self.state.db.run(_with_logs, caller, parse_id(request.id, "id"))
        return pb.GetJobResponse(job=convert.job(job, logs))

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
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must not be negative")
        job_id = parse_id(request.id, "id")
        db = self.state.db
        await db.run(jobs.get_visible, caller, job_id)
        # Subscribe before the first read: whatever is stored after it is also announced.
        with self.state.bus.watch(job_id) as subscription:
            job, lines = await db.run(_snapshot, job_id, request.after_seq)
            status = job.status
            last_seq = request.after_seq
            yield pb.WatchJobResponse(job=convert.job(job))
            while True:
                sent_lines = False
                for line in lines:
                    if line.seq == last_seq + 1:
                        last_seq, sent_lines = line.seq, True
                        yield pb.WatchJobResponse(line=convert.line(line))
                terminal = JobStatus(job.status).terminal
                if job.status != status or (terminal and sent_lines):
                    status = job.status  # the terminal status is always the last message
                    yield pb.WatchJobResponse(job=convert.job(job))
                if terminal:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        subscription.ready.wait(), self.state.settings.poll_interval
                    )
                batches, stale = subscription.take()
                lines = [line for batch in batches for line in batch if line.seq > last_seq]
                contiguous = all(
                    line.seq == last_seq + offset for offset, line in enumerate(lines, 1)
                )
                if stale or not batches or not contiguous:
                    job, lines = await db.run(_snapshot, job_id, last_seq)

    @unary()
    async def CancelJob(self, request: pb.CancelJobRequest, caller: User) -> pb.CancelJobResponse:
        job_id = parse_id(request.id, "id")
        db, bus = self.state.db, self.state.bus
        job = await db.run(jobs.get_visible, caller, job_id)
        ended: list[str] = []
        if job.status == JobStatus.PENDING:
            outcome = Outcome(JobStatus.CANCELLED, CANCELLED_BY_REQUEST)
            ended = await db.run(finish, job_id, outcome, JobStatus.PENDING)
            for ended_id in ended:
                await bus.job_changed(ended_id)
            if ended:
                await bus.jobs_queued()
        if not ended:  # running, or claimed since we looked
            await db.run(_flag_cancel, caller, job_id)
            await bus.cancel_requested(job_id)
        job = await db.run(jobs.get_visible, caller, job_id)
        return pb.CancelJobResponse(job=convert.job(job))
