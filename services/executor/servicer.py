"""The ExecutorService: validates requests, runs one operation per environment at a time.

Every mutating call follows one path (``_operate``): refuse bad input before the stream
starts, take the environment's slot, then run the work in a task of the servicer's own
(``_work``: repair what an earlier interrupted operation left, run the engine, end with
one result read back from disk) while the RPC streams its lines as they come. A caller
that leaves cancels the work; a stopping agent cancels it too, and waits for it and for
the repair it leaves behind (``stop``).
Lines travel in ``LogLines`` batches: whatever the work printed since the last message
was sent, so a lone line goes out at once and a flood takes few messages. The engine's
progress reports go between them as ``Progress`` messages (see ``_Outbox``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from darb.executor.v1 import executor_pb2 as pb
from darb.executor.v1 import executor_pb2_grpc
from services.executor.builtin_worker.progress import Report
from services.executor.disk import DiskKeeper
from services.executor.engines.base import Engine, Operation
from services.executor.errors import maps_errors
from services.executor.fencing import SETTLE_SECONDS, Fences
from services.executor.locks import stage_lock
from services.executor.packages import (
    EnvironmentState,
    InstalledPackage,
    locked_packages,
    read_state,
)
from services.executor.process import (
    FLOW_CONTROL,
    REAP_SECONDS,
    Emit,
    OutputLine,
    Stream,
    line_of,
)
from services.executor.workspace import DataLayout, Workspace, is_environment_id
from shared.config import ExecutorSettings
from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from shared.logs import clip, headline, key_values
from shared.platforms import validate_platforms
from shared.specs import parse_specs, resolve_channels, validate_package_name
from shared.timestamps import from_nanoseconds
from shared.validation import validate_environment_name
from shared.version import __version__

log = logging.getLogger(__name__)
ResponseType = Callable[..., Any]
Task = asyncio.Task[Any]
MAX_CHANNELS_PER_REQUEST = 32
# One message carries at most this many lines and characters (at most 4 UTF-8 bytes
# each: 1 MiB, well under gRPC's 4 MiB message limit).
MAX_BATCH_LINES = 4096
MAX_BATCH_CHARS = 256 * 1024
# Lines waiting to be sent; beyond this the pipes are no longer read (see _Outbox).
MAX_BUFFERED_LINES = 8 * MAX_BATCH_LINES
MAX_BUFFERED_CHARS = 8 * MAX_BATCH_CHARS
# A cancelled operation or repair ends once its process group is reaped.
CANCEL_SECONDS = 2 * REAP_SECONDS


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(
        self,
        settings: ExecutorSettings,
        layout: DataLayout,
        platform: str,
        engines: dict[str, Engine],
        engine_name: str,
        disk: DiskKeeper | None = None,
        data_id: str = "",
    ) -> None:
        self._disk = disk  # the free-space check and GetInfo's disk figures
        self._data_id = data_id  # the data directory's identity (``identity``)
        self._settings = settings
        self._layout = layout
        self._platform = platform
        self._engines = engines
        self._engine_name = engine_name
        self._busy: set[str] = set()
        self._fences = Fences(layout.data_dir)
        self._operations: set[Task] = set()
        self._repairs: set[Task] = set()
        self._stopping = False  # no operation starts any more
        self._stopped = False  # no repair starts any more

    @maps_errors
    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.GetInfoResponse:
        return pb.GetInfoResponse(
            agent_id=self._settings.agent_id,
            version=__version__,
            platform=self._platform,
            engines=sorted(self._engines),
            engine=self._engine_name,
            free_bytes=self._disk.free() if self._disk else 0,
            package_cache_bytes=self._disk.cache_bytes if self._disk else -1,
            data_id=self._data_id,
        )

    @maps_errors
    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: Any
    ) -> AsyncIterator[pb.CreateEnvironmentResponse]:
        workspace = self._workspace(request.environment_id)
        self._check_count(request.packages, request.channels)
        operation = Operation(
            "create",
            workspace,
            name=validate_environment_name(request.name),
            channels=self._channels(request.channels),
            specs=self._specs(request.packages),
            platforms=self._with_host(validate_platforms(request.platforms)),
            fence_token=request.fence_token,
        )
        async for message in self._operate(operation, pb.CreateEnvironmentResponse):
            yield message

    @maps_errors
    async def ApplyLock(
        self, request: pb.ApplyLockRequest, context: Any
    ) -> AsyncIterator[pb.ApplyLockResponse]:
        workspace = self._workspace(request.environment_id)
        self._check_count(request.packages, request.channels)
        platforms = validate_platforms(request.platforms)
        if self._platform not in platforms:
            raise InvalidArgument(f"platforms must include this agent's platform {self._platform}")
        name = validate_environment_name(request.name)
        channels, specs = self._channels(request.channels), self._specs(request.packages)
        staged = self._layout.runs / f"{uuid.uuid4().hex}.lock"
        policy = self._settings.channels
        try:
            await asyncio.to_thread(stage_lock, staged, request.lockfile, self._platform, policy)
            operation = Operation(
                *("apply", workspace, name, channels, specs),
                platforms=platforms,
                lockfile=staged,
                fence_token=request.fence_token,
            )
            async for message in self._operate(operation, pb.ApplyLockResponse):
                yield message
        finally:
            staged.unlink(missing_ok=True)  # the operation is over: _operate waited for it

    @maps_errors
    async def InstallPackages(
        self, request: pb.InstallPackagesRequest, context: Any
    ) -> AsyncIterator[pb.InstallPackagesResponse]:
        self._check_count(request.packages)
        specs = parse_specs(list(request.packages), self._settings.channels)
        operation = Operation(
            "install",
            self._workspace(request.environment_id),
            specs=tuple(s.text for s in specs),
            fence_token=request.fence_token,
        )
        async for message in self._operate(operation, pb.InstallPackagesResponse):
            yield message

    @maps_errors
    async def RemovePackages(
        self, request: pb.RemovePackagesRequest, context: Any
    ) -> AsyncIterator[pb.RemovePackagesResponse]:
        if not request.packages:
            raise InvalidArgument("at least one package name is required")
        self._check_count(request.packages)
        names = tuple(validate_package_name(name) for name in request.packages)
        workspace = self._workspace(request.environment_id)
        operation = Operation("remove", workspace, specs=names, fence_token=request.fence_token)
        async for message in self._operate(operation, pb.RemovePackagesResponse):
            yield message

    @maps_errors
    async def DeleteEnvironment(
        self, request: pb.DeleteEnvironmentRequest, context: Any
    ) -> AsyncIterator[pb.DeleteEnvironmentResponse]:
        workspace = self._workspace(request.environment_id)
        operation = Operation("delete", workspace, fence_token=request.fence_token)
        async for message in self._operate(operation, pb.DeleteEnvironmentResponse):
            yield message

    @maps_errors
    async def ListPackages(
        self, request: pb.ListPackagesRequest, context: Any
    ) -> pb.ListPackagesResponse:
        workspace = self._workspace(request.environment_id)
        if not workspace.exists():
            raise NotFound(f"environment {request.environment_id} does not exist")
        packages = await asyncio.to_thread(locked_packages, workspace, self._platform)
        return pb.ListPackagesResponse(packages=[_package_message(p) for p in packages])

    @maps_errors
    async def Fence(self, request: pb.FenceRequest, context: Any) -> pb.FenceResponse:
        """A takeover (see ``fencing.py``): record the token, stop an older operation and
        wait for its rollback, then report the environment as it is."""
        workspace = self._workspace(request.environment_id)
        environment_id = workspace.root.name
        recorded = await self._fences.fence(
            environment_id,
            request.fence_token,
            lambda: environment_id in self._busy,
            SETTLE_SECONDS,
        )
        state = await asyncio.to_thread(read_state, workspace, self._platform)
        return pb.FenceResponse(
            fence_token=recorded,
            exists=bool(state.manifest),
            packages=[_package_message(p) for p in state.packages],
            manifest=state.manifest,
            lockfile=state.lockfile,
            content_hash=state.content_hash,
        )

    def _workspace(self, environment_id: str) -> Workspace:
        if not is_environment_id(environment_id):
            raise InvalidArgument("environment_id must be a lower-case UUID")
        return self._layout.workspace(environment_id)

    def _channels(self, channels: Sequence[str]) -> tuple[str, ...]:
        return tuple(resolve_channels(list(channels), self._settings.channels))

    def _specs(self, packages: Sequence[str]) -> tuple[str, ...]:
        """Validated specs; none is a manifest without dependencies."""
        if not packages:
            return ()
        return tuple(s.text for s in parse_specs(list(packages), self._settings.channels))

    def _with_host(self, platforms: tuple[str, ...]) -> tuple[str, ...]:
        """A manifest's platforms: the host's first, then the others asked for."""
        return (self._platform, *(p for p in platforms if p != self._platform))

    def _check_count(self, packages: Sequence[str], channels: Sequence[str] = ()) -> None:
        """Bound the work one request can ask for before any of it is parsed: validation
        runs on the event loop, so a list of a million specs would stall every call."""
        limit = self._settings.max_packages_per_request
        if len(packages) > limit:
            raise ResourceExhausted(
                f"{len(packages)} packages in one request; the limit is {limit}"
                " (DARB_MAX_PACKAGES_PER_REQUEST)"
            )
        if len(channels) > MAX_CHANNELS_PER_REQUEST:
            raise ResourceExhausted(
                f"{len(channels)} channels in one request; the limit is {MAX_CHANNELS_PER_REQUEST}"
            )

    def _engine(self) -> Engine:
        engine = self._engines.get(self._engine_name)
        if engine is None:
            raise FailedPrecondition(
                f"the {self._engine_name!r} engine is not available on this host"
                " (the cli engine needs pixi on PATH)"
            )
        return engine

    async def _operate(
        self, operation: Operation, response_type: ResponseType
    ) -> AsyncIterator[Any]:
        engine = self._engine()
        environment_id = operation.workspace.root.name
        if self._stopping:
            raise Unavailable("the agent is stopping")
        if environment_id in self._busy:
            raise Aborted(f"another operation on environment {environment_id} is running")
        if self._disk is not None:
            self._disk.admit(operation.kind)  # RESOURCE_EXHAUSTED when the disk is full
        self._busy.add(environment_id)  # released by the work's task, or by its repair
        try:  # the token is recorded before anything changes; a lower one is refused
            await self._fences.admit(environment_id, operation.fence_token)
        except BaseException:
            self._busy.discard(environment_id)
            raise
        try:
            _check_preconditions(operation)
        except Exception:
            self._repair(operation, engine)
            raise
        stream = _LineStream(response_type)
        with _OperationLog(operation, engine.name, stream):
            work = self._start(self._operations, self._work(operation, engine, stream))
            self._fences.track(environment_id, operation.fence_token, work)
            try:
                async for message in stream.relay(work):
                    yield message
            finally:
                work.cancel()  # the caller left or failed: stop the work (if it still runs)
                await asyncio.wait({work})

    async def _work(self, operation: Operation, engine: Engine, stream: _LineStream) -> Any:
        """The operation in a task of the servicer's own, so that stopping the agent can
        end it even when gRPC never resumes the RPC; returns the result message. Cancelled
        or failed, it leaves the environment to a repair in the background."""
        FLOW_CONTROL.set(stream.room)  # seen by the pipe readers the work starts
        finished = False
        try:
            result = await self._phases(operation, engine, stream)
            finished = True
            return result
        finally:
            stream.close()
            if finished:
                self._busy.discard(operation.workspace.root.name)
            else:
                self._repair(operation, engine)

    async def _phases(self, operation: Operation, engine: Engine, stream: _LineStream) -> Any:
        workspace, emit = operation.workspace, stream.put
        if operation.kind != "delete":
            error = await _recover(workspace, engine, emit)
            if error:
                state = await asyncio.to_thread(read_state, workspace, self._platform)
                return stream.result(f"the environment could not be repaired: {error}", state)
        timeout = self._settings.operation_timeout
        try:
            async with asyncio.timeout(timeout):
                error = await engine.run(operation, emit, stream.put_progress)
        except TimeoutError:
            stream.timed_out = True
            error = f"timed out after {timeout:g} seconds; the operation was stopped"
        if error is not None:
            await _recover(workspace, engine, emit)
        state = await asyncio.to_thread(read_state, workspace, self._platform)
        return stream.result(error, state)

    def _repair(self, operation: Operation, engine: Engine) -> None:
        """Repair the environment in the background, then release it. Once the agent has
        stopped its repairs, the next operation on the environment repairs it instead."""
        if self._stopped:
            log.warning("environment %s is left to repair later", operation.workspace.root.name)
            self._busy.discard(operation.workspace.root.name)
        else:
            self._start(self._repairs, self._repair_then_release(operation, engine))

    async def _repair_then_release(self, operation: Operation, engine: Engine) -> None:
        environment_id = operation.workspace.root.name
        try:
            error = await _recover(operation.workspace, engine, lambda line: None)
            if error:
                log.error("environment %s could not be repaired: %s", environment_id, error)
        finally:
            self._busy.discard(environment_id)

    def _start(self, tasks: set[Task], coroutine: Coroutine[Any, Any, Any]) -> Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def stop(self, repair_seconds: float) -> None:
        """Stop every operation, give their repairs ``repair_seconds`` to end, then cancel
        those still running. Returns once no task of the servicer is left, so that none is
        left to the cancellation of every task at the end of ``asyncio.run``: there, a
        child process being spawned is cancelled along with asyncio's own task that
        connects its pipes, and CPython 3.11 then waits for those pipes forever."""
        self._stopping = True
        for task in self._operations:
            task.cancel()
        await _wait_all(self._operations, CANCEL_SECONDS)  # their repairs have started
        await _wait_all(self._repairs, repair_seconds)
        self._stopped = True
        for task in self._repairs:
            task.cancel()
        await _wait_all(self._repairs, CANCEL_SECONDS)


async def _wait_all(tasks: set[Task], timeout: float) -> None:
    """Wait until ``tasks`` (tasks remove themselves when done) is empty, or ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while tasks and (left := deadline - loop.time()) > 0:
        await asyncio.wait(set(tasks), timeout=left)
    if tasks:
        log.error("%d tasks still running after %gs: %s", len(tasks), timeout, tasks)


def _check_preconditions(operation: Operation) -> None:
    workspace = operation.workspace
    environment_id = workspace.root.name
    if operation.kind == "apply":
        return  # onto the environment, or a new one
    if operation.kind == "create":
        if workspace.exists():
            raise AlreadyExists(f"environment {environment_id} already exists")
        return
    if not workspace.exists():
        raise NotFound(f"environment {environment_id} does not exist")
    if operation.kind == "remove":
        dependencies = _dependencies(workspace)
        missing = [name for name in operation.specs if name not in dependencies]
        if missing:
            raise NotFound(
                f"not a dependency of environment {environment_id}: {', '.join(missing)}"
            )


def _dependencies(workspace: Workspace) -> set[str]:
    with workspace.manifest.open("rb") as manifest:
        table = tomllib.load(manifest).get("dependencies", {})
    return {name.lower() for name in table}


async def _recover(workspace: Workspace, engine: Engine, emit: Emit) -> str | None:
    """Bring an environment back to its last committed state; None when that worked."""
    if workspace.root.exists() and not workspace.exists():
        emit(line_of(Stream.STDOUT, "darb: removing an incomplete environment"))
        await asyncio.to_thread(shutil.rmtree, workspace.root, True)
        return None
    if not workspace.exists() or not workspace.needs_recovery():
        return None
    emit(line_of(Stream.STDOUT, "darb: restoring the environment to its pixi.lock"))
    return await engine.run(Operation("restore", workspace), emit)


class _Outbox:
    """Lines the work has emitted and the stream has not sent yet, and its progress
    reports, each with the number of lines emitted before it (its place among them): of
    each run of reports of one phase only the latest waits, so a slow reader gets every
    phase and the latest counts, and these stay few.

    Bounded: past ``MAX_BUFFERED_*`` the pipe readers wait (``FLOW_CONTROL``), so when the
    control plane reads slowly gRPC flow control reaches back to the child's pipe.
    """

    def __init__(self) -> None:
        self.lines: list[OutputLine] = []
        self.reports: list[tuple[int, Report]] = []
        self._chars = 0
        self._closed = False
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()

    def put(self, line: OutputLine) -> None:
        self.lines.append(line)
        self._chars += len(line.text)
        self._ready.set()

    def put_progress(self, report: Report) -> None:
        placed = (len(self.lines), report)
        if self.reports and self.reports[-1][1].phase == report.phase:
            self.reports[-1] = placed
        else:
            self.reports.append(placed)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def room(self) -> None:
        while len(self.lines) >= MAX_BUFFERED_LINES or self._chars >= MAX_BUFFERED_CHARS:
            self._drained.clear()
            await self._drained.wait()

    async def take(self) -> tuple[list[OutputLine], list[tuple[int, Report]]] | None:
        """Everything emitted so far (waiting for at least one line or report); None
        once closed."""
        while not self.lines and not self.reports:
            if self._closed:
                return None
            await self._ready.wait()
            self._ready.clear()
        lines, self.lines, self._chars = self.lines, [], 0
        reports, self.reports = self.reports, []
        self._drained.set()
        return lines, reports


class _LineStream:
    """The lines of one operation on their way to the caller: the work puts them in, the
    RPC takes them out in messages, numbered across the operation's phases."""

    def __init__(self, response_type: ResponseType) -> None:
        self._response_type = response_type
        self._outbox = _Outbox()
        self.put = self._outbox.put
        self.put_progress = self._outbox.put_progress
        self.room = self._outbox.room
        self.close = self._outbox.close
        self._seq = 0
        self.timed_out = False
        self.reported: str | None = None  # the error the result carried, once built

    async def relay(self, work: Task) -> AsyncIterator[Any]:
        """The lines and progress ``work`` emits, in messages as they arrive, then its
        result."""
        while (taken := await self._outbox.take()) is not None:
            lines, reports = taken
            start = 0
            for place, report in reports:
                for message in self._messages(lines[start:place]):
                    yield message
                yield self._progress(report)
                start = place
            for message in self._messages(lines[start:] if start else lines):
                yield message
        yield await work

    def _progress(self, report: Report) -> Any:
        progress = pb.Progress(
            phase=report.phase,  # type: ignore[arg-type]  # OperationPhase's numbers
            packages_done=report.packages_done,
            packages_total=report.packages_total,
            bytes_done=report.bytes_done,
            bytes_total=report.bytes_total,
            time=from_nanoseconds(report.time_ns),
        )
        return self._response_type(progress=progress)

    def _messages(self, lines: list[OutputLine]) -> Iterator[Any]:
        """``lines`` numbered, in messages of at most ``MAX_BATCH_*``. Lines read from one
        chunk share their time, so its Timestamp is built once."""
        message, add, count, chars = None, None, 0, 0
        stamped, stamp = -1, Timestamp()
        for stream, text, time_ns in lines:
            if add is None:
                message = self._response_type()
                add = message.log_lines.lines.add
            if time_ns != stamped:
                stamped, stamp = time_ns, from_nanoseconds(time_ns)
            self._seq += 1
            add(seq=self._seq, stream=stream, text=text, time=stamp)
            count += 1
            chars += len(text)
            if count >= MAX_BATCH_LINES or chars >= MAX_BATCH_CHARS:
                yield message
                message, add, count, chars = None, None, 0, 0
        if message is not None:
            yield message

    def result(self, error: str | None, state: EnvironmentState) -> Any:
        self.reported = error or ""
        result = pb.OperationResult(
            success=error is None,
            error=error or "",
            packages=[_package_message(p) for p in state.packages],
            manifest=state.manifest,
            lockfile=state.lockfile,
            content_hash=state.content_hash,
        )
        return self._response_type(result=result)


class _OperationLog:
    """One ``key=value`` log line when an operation starts and one when it ends, so an
    environment's history can be followed with grep; long spec lists are cut."""

    def __init__(self, operation: Operation, engine: str, stream: _LineStream) -> None:
        self._fields = {
            "environment_id": operation.workspace.root.name,
            "kind": operation.kind,
            "engine": engine,
        }
        self._specs = ",".join(operation.specs)
        self._stream = stream
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()
        log.info("operation started %s", key_values(**self._fields, specs=clip(self._specs)))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration = f"{time.monotonic() - self._started:.3f}s"
        outcome = self._outcome(exc)
        log.info("operation ended %s", key_values(**self._fields, duration=duration, **outcome))

    def _outcome(self, exc: BaseException | None) -> dict[str, str]:
        """Once the result is built the work is over, even if the caller then went away."""
        reported = self._stream.reported
        if reported is None:  # stopped before the result: the caller left, or a bug
            if isinstance(exc, Exception):
                error = clip(headline(str(exc) or type(exc).__name__))
                return {"outcome": "failed", "error": error}
            return {"outcome": "cancelled"}
        if self._stream.timed_out:
            return {"outcome": "timed_out"}
        if reported:
            return {"outcome": "failed", "error": clip(headline(reported))}
        return {"outcome": "success"}


def _package_message(package: InstalledPackage) -> pb.Package:
    return pb.Package(
        name=package.name, version=package.version, build=package.build, channel=package.channel
    )
