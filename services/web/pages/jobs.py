"""The jobs: the list, a job's page with its cancel button, and its live events (status,
log lines, progress) as Server-Sent Events fed from ``WatchJob``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import grpc
import grpc.aio
from aiohttp import web

from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from services.web.api import readable
from services.web.filters import iso, job_status, phase_name
from services.web.pages.common import (
    PAGE_SIZE,
    api,
    call,
    call_or_back,
    current_user,
    optional,
    render,
    token,
)
from services.web.pages.environments import job_url, permissions

KEEPALIVE_SECONDS = 15.0
TERMINAL_JOBS = {
    common_pb2.JOB_STATUS_COMPLETED,
    common_pb2.JOB_STATUS_FAILED,
    common_pb2.JOB_STATUS_CANCELLED,
}


async def jobs_page(request: web.Request) -> web.Response:
    """Every job the caller sees, newest first; with ``?environment=<id>``, that
    environment's (a 404 for one the caller may not see)."""
    await current_user(request)
    env_id = request.query.get("environment", "")
    message = jobs_pb2.ListJobsRequest(
        environment_id=env_id, page_size=PAGE_SIZE, page_token=request.query.get("page", "")
    )
    listed = call(request, api(request).jobs.ListJobs, message)
    context: dict[str, Any]
    if env_id:
        response, env = await asyncio.gather(listed, _environment(request, env_id))
        context = {"env": env}
    else:
        response, names = await asyncio.gather(listed, environment_names(request))
        context = {"names": names}
    query = {"environment": env_id} if env_id else {}
    next_page = response.next_page_token
    return render(
        request,
        "jobs.html",
        nav="jobs",
        jobs=list(response.jobs),
        next_url=f"/jobs?{urlencode({**query, 'page': next_page})}" if next_page else "",
        **context,
    )


async def _environment(request: web.Request, env_id: str) -> common_pb2.Environment:
    message = environments_pb2.GetEnvironmentRequest(id=env_id)
    found: common_pb2.Environment = (
        await call(request, api(request).envs.GetEnvironment, message)
    ).environment
    return found


async def environment_names(request: web.Request) -> dict[str, str]:
    """id -> name of the environments the caller sees (the first pages), for job lists."""
    names: dict[str, str] = {}
    page = ""
    for _ in range(5):
        message = environments_pb2.ListEnvironmentsRequest(page_size=200, page_token=page)
        response = await optional(request, api(request).envs.ListEnvironments, message)
        if response is None:
            break
        names.update((env.id, env.name) for env in response.environments)
        if not (page := response.next_page_token):
            break
    return names


async def job_page(request: web.Request) -> web.Response:
    await current_user(request)
    job_id = request.match_info["job_id"]
    message = jobs_pb2.GetJobRequest(id=job_id, view=jobs_pb2.JOB_VIEW_BASIC)  # the log: SSE
    job = (await call(request, api(request).jobs.GetJob, message)).job
    env, allowed = await _environment_of(request, job)
    return render(
        request,
        "job.html",
        nav="jobs",
        job=job,
        env=env,
        allowed=allowed,
        terminal=job.status in TERMINAL_JOBS,
        error=request.query.get("error", ""),
    )


async def job_log(request: web.Request) -> web.Response:
    """The job's whole log as plain text (for a browser without scripts, or to save)."""
    await current_user(request)
    message = jobs_pb2.GetJobRequest(id=request.match_info["job_id"], view=jobs_pb2.JOB_VIEW_FULL)
    job = (await call(request, api(request).jobs.GetJob, message)).job
    return web.Response(text=job.logs, content_type="text/plain", charset="utf-8")


async def _environment_of(
    request: web.Request, job: common_pb2.Job
) -> tuple[common_pb2.Environment | None, set[str]]:
    """The job's environment and what the caller may do with it; none for one that is
    deleted, also when its delete ends between the two calls (a delete's page opens just
    as its job ends)."""
    message = environments_pb2.GetEnvironmentRequest(id=job.environment_id)
    response = await optional(request, api(request).envs.GetEnvironment, message)
    if response is None:
        return None, set()
    try:
        return response.environment, await permissions(request, response.environment)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None, set()


async def cancel_job(request: web.Request) -> web.Response:
    await current_user(request)
    job_id = request.match_info["job_id"]
    back, message = job_url(job_id), jobs_pb2.CancelJobRequest(id=job_id)
    await call_or_back(request, api(request).jobs.CancelJob, message, back)
    raise web.HTTPFound(back)


# --- The live events ---------------------------------------------------------------------


def job_json(job: common_pb2.Job) -> dict[str, Any]:
    return {
        "status": job_status(job.status),
        "terminal": job.status in TERMINAL_JOBS,
        "error": job.error,
        "started_at": iso(job.started_at) if job.HasField("started_at") else "",
        "completed_at": iso(job.completed_at) if job.HasField("completed_at") else "",
    }


def progress_json(progress: common_pb2.JobProgress) -> dict[str, Any]:
    return {
        "phase": phase_name(progress.phase),
        "packages_done": progress.packages_done,
        "packages_total": progress.packages_total,
        "bytes_done": progress.bytes_done,
        "bytes_total": progress.bytes_total,
    }


def _stream_name(stream: int) -> str:
    return "stderr" if stream == common_pb2.LOG_STREAM_STDERR else "stdout"


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    """The job as Server-Sent Events, from ``WatchJob``: ``job`` on each status change,
    ``lines`` (id = the last seq, so a reconnect resumes after it), ``progress``, then
    ``end``; ``failure`` carries a readable message if the watch cannot go on, and
    ``retry`` when it may go on later (the control plane was unavailable): the page then
    lets the browser reconnect, which resumes after the last line it got."""
    if not token(request):
        raise web.HTTPUnauthorized()
    job_id = request.match_info["job_id"]
    try:
        after = int(request.headers.get("Last-Event-ID") or request.query.get("after") or 0)
    except ValueError:
        after = 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    response.headers["X-Accel-Buffering"] = "no"
    await response.prepare(request)
    message = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after)
    stream = api(request).stream(api(request).jobs.WatchJob, message, token(request))
    try:
        async for chunk in _events(stream):
            await response.write(chunk)
        await response.write(sse("end", {}))
    except grpc.aio.AioRpcError as exc:
        retry = exc.code() == grpc.StatusCode.UNAVAILABLE
        await response.write(sse("failure", {"message": readable(exc), "retry": retry}))
    finally:
        stream.cancel()
    return response


def _event_chunk(event: Any) -> bytes:
    """One ``WatchJob`` event as an SSE chunk (empty for one that shows nothing)."""
    kind = event.WhichOneof("event")
    if kind == "log_lines" and event.log_lines.lines:
        lines = [
            {"seq": line.seq, "stream": _stream_name(line.stream), "text": line.text}
            for line in event.log_lines.lines
        ]
        return sse("lines", {"lines": lines}, lines[-1]["seq"])
    if kind == "job":
        return sse("job", job_json(event.job))
    if kind == "progress":
        return sse("progress", progress_json(event.progress))
    return b""


async def _events(stream: Any) -> AsyncIterator[bytes]:
    """The stream's events as SSE chunks, with a comment now and then to keep it open."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except grpc.aio.AioRpcError as exc:
            await queue.put(exc)
        await queue.put(done)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if event is done:
                return
            if isinstance(event, grpc.aio.AioRpcError):
                raise event
            if chunk := _event_chunk(event):
                yield chunk
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
