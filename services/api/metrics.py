"""Observability of the control plane: Prometheus metrics and ``key=value`` job log lines.

Every metric lives in the ``Metrics`` object's own registry, not the process-wide default,
so that several control planes in one process (and tests) never share counters. The
``/metrics`` endpoint is served only when ``DARB_METRICS_ADDR`` is set (``Exporter``).
With ``DARB_API_PROCESSES`` > 1 every process keeps its values in files of one directory
(prometheus_client's multiprocess mode, ``shared_across_processes``), which the primary's
endpoint adds up: RPCs are counted whichever process served them.

Jobs are counted where their end is recorded, from the rows that end returns, with the
database's times: by the dispatcher (jobs it ran, jobs whose lease it found expired and
queued jobs failed behind a failed create) and by CancelJob (a pending job). The
job-count gauges come from a query of the (indexed) active statuses only; terminal jobs
are what ``darb_jobs_total`` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)

from services.api import payloads
from services.api.database.db import Database
from services.api.records import ClaimedJob, EndedJob
from services.api.repo import jobs
from services.api.repo.models import ACTIVE_JOB_STATUSES, JobStatus, JobType
from shared.logs import clip, headline, key_values

log = logging.getLogger(__name__)

WATCH_JOB_METHOD = "/darb.v1.JobService/WatchJob"
REFRESH_INTERVAL = 5.0
TYPE_LABELS = {
    JobType.CREATE_ENVIRONMENT: "create",
    JobType.INSTALL_PACKAGES: "install",
    JobType.REMOVE_PACKAGES: "remove",
    JobType.DELETE_ENVIRONMENT: "delete",
    JobType.ROLLBACK_ENVIRONMENT: "rollback",
    JobType.REBUILD_ENVIRONMENT: "rebuild",
    JobType.MOVE_ENVIRONMENT: "move",
}
# prometheus_client's own variable: the directory where each process keeps its values.
PROCESS_FILES = "PROMETHEUS_MULTIPROC_DIR"
JOB_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
DISPATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The control plane's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.jobs_total = Counter(
            "darb_jobs", "Jobs ended, by type and final status.", ["type", "status"], registry=reg
        )
        # Gauges only the primary sets: across processes, its value (the others hold 0).
        self.jobs_active = Gauge(
            "darb_jobs_active",
            "Pending and running jobs in the database, by type and status.",
            ["type", "status"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.queue_depth = Gauge(
            "darb_job_queue_depth",
            "Pending jobs in the database.",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.dispatch_latency = Histogram(
            "darb_job_dispatch_latency_seconds",
            "From a job's submission to its claim by a dispatcher.",
            buckets=DISPATCH_BUCKETS,
            registry=reg,
        )
        self.job_duration = Histogram(
            "darb_job_duration_seconds",
            "From a job's start to its end, by type and final status.",
            ["type", "status"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=reg,
        )
        self.agent_up = Gauge(
            "darb_agent_up",
            "1 if the agent answered its last probe.",
            ["agent"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.rpc_duration = Histogram(
            "darb_rpc_duration_seconds",
            "gRPC calls served, by method and status code.",
            ["method", "code"],
            registry=reg,
        )
        self.watch_streams = Gauge(
            "darb_watch_streams",
            "Open WatchJob streams.",
            registry=reg,
            multiprocess_mode="livesum",  # those of every process
        )
        self.log_lines = Counter("darb_log_lines", "Job log lines stored.", registry=reg)

    def set_active_jobs(self, counts: dict[tuple[str, str], int]) -> None:
        """Every type and active status gets a value, so a drained queue reads 0."""
        for job_type, type_label in TYPE_LABELS.items():
            for status in ACTIVE_JOB_STATUSES:
                count = counts.get((job_type, status), 0)
                self.jobs_active.labels(type_label, status.lower()).set(count)
        pending = (n for (_, status), n in counts.items() if status == JobStatus.PENDING)
        self.queue_depth.set(sum(pending))


def keep_values_in_files(directory: str) -> None:
    """Every metric created from now on in this process keeps its values in files in
    ``directory`` (one per process and kind), which ``Exporter`` adds up."""
    os.environ[PROCESS_FILES] = directory
    values.ValueClass = values.MultiProcessValue()


@contextlib.contextmanager
def shared_across_processes(processes: int, exported: bool) -> Iterator[None]:
    """In the primary process: with more than one process and an endpoint, a directory
    for everyone's values (the RPC workers inherit its name), removed at the end."""
    if processes < 2 or not exported:
        yield
        return
    directory = tempfile.mkdtemp(prefix="darb-metrics-")
    keep_values_in_files(directory)
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Times every served call by method and final code, and counts open WatchJob streams.

    Only methods the server has a handler for are labelled, so clients cannot create
    label values; an exception that escapes a handler ends the call as UNKNOWN.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Wrapped once per method: a handler is the same object for every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        wrapped = self._wrap(handler, handler_call_details.method)
        if handler is not None:
            self._wrapped[handler_call_details.method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any] | None, method: str) -> Any:
        kind = _behavior_kind(handler)
        if handler is None or kind is None:
            return handler
        behavior = getattr(handler, kind)
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._timed_stream(behavior, method)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._timed_call(behavior, method)
        else:
            return handler
        # Handlers are grpc's namedtuples, which the stubs do not say.
        return handler._replace(**{kind: wrapped})  # type: ignore[attr-defined]

    def _timed_call(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._timer(method, context):
                return await behavior(request, context)

        return call

    def _timed_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._timer(method, context):
                async for response in behavior(request, context):
                    yield response

        return stream

    @contextlib.contextmanager
    def _timer(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        watch = method == WATCH_JOB_METHOD
        if watch:
            self._metrics.watch_streams.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = context.code() or grpc.StatusCode.UNKNOWN  # set by ``context.abort``
            raise
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.rpc_duration.labels(method.lstrip("/"), code.name).observe(elapsed)
            if watch:
                self._metrics.watch_streams.dec()


def _behavior_kind(handler: grpc.RpcMethodHandler | None) -> str | None:
    if handler is None:
        return None
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"


class JobObserver:
    """Records each job's start and end: metrics plus one ``key=value`` log line each."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def started(self, job: ClaimedJob, agent: str) -> None:
        fields = {"job_id": job.id, "environment_id": job.environment_id}
        fields |= {"type": TYPE_LABELS[JobType(job.type)], "agent": agent}
        self._metrics.dispatch_latency.observe(job.queued_seconds)
        fields["waited"] = f"{job.queued_seconds:.3f}s"
        if specs := ",".join(payloads.packages_of(job.payload)):
            fields["specs"] = clip(specs)
        log.info("job started %s", key_values(**fields))

    def ended(self, ended: list[EndedJob]) -> None:
        for job in ended:
            self._record_end(job)

    def _record_end(self, job: EndedJob) -> None:
        type_label, status = TYPE_LABELS[JobType(job.type)], job.status.lower()
        self._metrics.jobs_total.labels(type_label, status).inc()
        fields = {"job_id": job.id, "environment_id": job.environment_id}
        fields |= {"type": type_label, "status": status, "agent": job.agent}
        if job.started_at is not None and job.completed_at is not None:
            duration = (job.completed_at - job.started_at).total_seconds()
            self._metrics.job_duration.labels(type_label, status).observe(max(duration, 0.0))
            fields["duration"] = f"{duration:.3f}s"
        if job.error:
            fields["error"] = clip(headline(job.error))
        log.info("job ended %s", key_values(**fields))


class Exporter:
    """The ``/metrics`` HTTP endpoint (a daemon thread) and the task that keeps the job
    gauges current from the database."""

    def __init__(self, metrics: Metrics, database: Database) -> None:
        self._metrics = metrics
        self._db = database
        self._server: WSGIServer | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, addr: str) -> int:
        """Serves on ``addr`` (``HOST:PORT``; port 0 picks one) and returns the port."""
        host, port = parse_addr(addr)
        registry = self._metrics.registry
        if directory := os.environ.get(PROCESS_FILES):  # every process's values, added up
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
        self._server, _ = start_http_server(port, host, registry)
        bound = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics on http://%s:%d/metrics", shown, bound)
        self._task = asyncio.create_task(self._refresh(), name="darb-metrics-refresh")
        return bound

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    async def _refresh(self) -> None:
        """Warns once when the counts cannot be read, not on every refresh of an outage."""
        failing = False
        while True:
            try:
                self._metrics.set_active_jobs(await self._db.read(jobs.active_counts))
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("counting jobs for metrics failed (%s)", type(exc).__name__)
                failing = True
            await asyncio.sleep(REFRESH_INTERVAL)


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"DARB_METRICS_ADDR must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
