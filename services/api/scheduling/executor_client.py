"""The seam to the executor agents: one streaming operation per job."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc

from darb.executor.v1 import executor_pb2 as pb
from darb.executor.v1 import executor_pb2_grpc as pb_grpc
from services.api import payloads
from services.api.records import AgentState, LockToApply, PackageRow
from services.api.repo.models import utcnow
from services.api.repo.progress import Progress, phase_name
from shared.config import TlsSettings
from shared.manifests import parse_manifest
from shared.timestamps import to_datetime
from shared.tls import channel_credentials

# Codes after which the same call can simply be tried again: the agent is busy
# restoring the environment after a cancel, or not reachable for a moment.
RETRYABLE = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)
STREAM_NAMES = {pb.LOG_STREAM_STDERR: "stderr"}
# gRPC backs off up to two minutes between reconnects to a failed address; a restarted
# agent must be found again within a probe or two, so the back-off is kept short.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


# What an agent is asked to do: a job's payload, or a lock to apply (a rollback).
Operation = payloads.Payload | LockToApply
# (stream, time, text) of one line, as ``LogCap.extend`` takes it.
LineTuple = tuple[str, datetime, str]


@dataclass(frozen=True)
class AgentLines:
    """The lines of one message of the agent, in order. ``message`` is the agent's
    ``LogLines`` itself: its seqs are the agent's own, from ``first_seq``."""

    lines: Sequence[LineTuple]
    first_seq: int = 0
    message: Any = None


@dataclass(frozen=True)
class AgentResult:
    success: bool
    error: str
    state: AgentState


class ExecutorError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


@dataclass(frozen=True)
class FencedState:
    """The agent's answer to ``Fence``: whether the environment exists there, and as what."""

    exists: bool
    state: AgentState


class ExecutorClient(Protocol):
    def run(
        self, executor: str, environment_id: str, operation: Operation, fence: int = 0
    ) -> AsyncIterator[AgentLines | Progress | AgentResult]:
        """Streams the operation's lines in batches, with its progress reports between
        them, and then its result; raises ExecutorError. ``fence``: the claim's fencing
        token (``scheduling/takeover.py``).

        Closing the iterator early cancels the operation on the agent.
        """
        ...

    async def fence(
        self, executor: str, environment_id: str, token: int, timeout: float
    ) -> FencedState:
        """Raises the agent's fencing token of the environment to ``token``: an older
        operation is stopped and can no longer commit; returns the state it left. Raises
        ExecutorError."""
        ...

    async def probe(self, executor: str, timeout: float) -> str | None:
        """The agent's data directory identity (``GetInfoResponse.data_id``, empty from
        an older agent) if it answers a cheap call within ``timeout`` seconds, else
        None."""
        ...

    async def close(self) -> None: ...


class GrpcExecutorClient:
    """Talks to agents over gRPC, one channel per address, with the agent token."""

    def __init__(self, token: str, tls: TlsSettings) -> None:
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.ExecutorServiceStub]] = {}

    def _stub(self, addr: str) -> pb_grpc.ExecutorServiceStub:
        if addr not in self._stubs:
            credentials = channel_credentials(self._tls)
            channel = (
                grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
                if credentials is None
                else grpc.aio.secure_channel(addr, credentials, options=CHANNEL_OPTIONS)
            )
            self._stubs[addr] = (channel, pb_grpc.ExecutorServiceStub(channel))
        return self._stubs[addr][1]

    def _call(
        self,
        stub: pb_grpc.ExecutorServiceStub,
        environment_id: str,
        operation: Operation,
        fence: int = 0,
    ) -> grpc.aio.UnaryStreamCall:
        metadata = self._metadata
        if isinstance(operation, payloads.CreatePayload) and operation.lockfile:
            operation = LockToApply(
                operation.name,
                operation.channels,
                operation.platforms,
                operation.packages,
                operation.lockfile,
            )
        if isinstance(operation, LockToApply):
            apply = pb.ApplyLockRequest(
                environment_id=environment_id,
                name=operation.name,
                channels=operation.channels,
                platforms=operation.platforms,
                packages=operation.packages,
                lockfile=operation.lockfile,
                fence_token=fence,
            )
            return stub.ApplyLock(apply, metadata=metadata)
        if isinstance(operation, payloads.CreatePayload):
            create = pb.CreateEnvironmentRequest(
                environment_id=environment_id,
                name=operation.name,
                channels=operation.channels,
                packages=operation.packages,
                platforms=operation.platforms,
                fence_token=fence,
            )
            return stub.CreateEnvironment(create, metadata=metadata)
        if isinstance(operation, payloads.InstallPayload):
            install = pb.InstallPackagesRequest(
                environment_id=environment_id, packages=operation.packages, fence_token=fence
            )
            return stub.InstallPackages(install, metadata=metadata)
        if isinstance(operation, payloads.RemovePayload):
            remove = pb.RemovePackagesRequest(
                environment_id=environment_id, packages=operation.packages, fence_token=fence
            )
            return stub.RemovePackages(remove, metadata=metadata)
        if isinstance(operation, payloads.RollbackPayload):  # the dispatcher resolves these
            raise TypeError("a rollback reaches the agent as a LockToApply")
        delete = pb.DeleteEnvironmentRequest(environment_id=environment_id, fence_token=fence)
        return stub.DeleteEnvironment(delete, metadata=metadata)

    async def run(
        self, executor: str, environment_id: str, operation: Operation, fence: int = 0
    ) -> AsyncIterator[AgentLines | Progress | AgentResult]:
        call = self._call(self._stub(executor), environment_id, operation, fence)
        try:
            async for message in call:
                if message.HasField("log_lines"):
                    batch = message.log_lines
                    first = batch.lines[0].seq if batch.lines else 0
                    yield AgentLines(_lines(batch.lines), first, batch)
                elif message.HasField("progress"):
                    yield _progress(message.progress)
                elif message.HasField("result"):
                    yield _result(message.result)
        except grpc.aio.AioRpcError as exc:
            raise ExecutorError(exc.code(), exc.details() or exc.code().name) from exc
        finally:
            call.cancel()

    async def fence(
        self, executor: str, environment_id: str, token: int, timeout: float
    ) -> FencedState:
        request = pb.FenceRequest(environment_id=environment_id, fence_token=token)
        try:
            answer = await self._stub(executor).Fence(
                request, metadata=self._metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise ExecutorError(exc.code(), exc.details() or exc.code().name) from exc
        result = pb.OperationResult(
            success=True,
            packages=answer.packages,
            manifest=answer.manifest,
            lockfile=answer.lockfile,
            content_hash=answer.content_hash,
        )
        return FencedState(answer.exists, _result(result).state)

    async def probe(self, executor: str, timeout: float) -> str | None:
        """GetInfo with a deadline: it runs on the agent's event loop, so it also fails
        when the agent is alive but frozen (stopped, swapping, partitioned)."""
        try:
            info = await self._stub(executor).GetInfo(
                pb.GetInfoRequest(), metadata=self._metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return str(info.data_id)

    async def close(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()


def _lines(lines: Sequence[Any]) -> list[LineTuple]:
    """``pb.LogLine``s as tuples. Lines the agent read from one chunk share one time,
    so the datetime is built once per time, from integers."""
    tuples: list[LineTuple] = []
    seconds, nanos, time = -1, -1, utcnow()
    for line in lines:
        stamp = line.time
        if stamp.seconds != seconds or stamp.nanos != nanos:
            seconds, nanos = stamp.seconds, stamp.nanos
            time = to_datetime(stamp) if seconds or nanos else utcnow()
        tuples.append((STREAM_NAMES.get(line.stream, "stdout"), time, line.text))
    return tuples


def _progress(progress: pb.Progress) -> Progress:
    stamp = progress.time
    return Progress(
        phase_name(progress.phase),
        progress.packages_done,
        progress.packages_total,
        progress.bytes_done,
        progress.bytes_total,
        stamp.seconds * 1_000_000_000 + stamp.nanos,
    )


def _result(result: pb.OperationResult) -> AgentResult:
    packages = [PackageRow(p.name, p.version, p.build, p.channel) for p in result.packages]
    fields = parse_manifest(result.manifest) if result.manifest else None
    state = AgentState(
        packages,
        result.manifest,
        result.lockfile,
        result.content_hash,
        fields.platforms if fields else [],
        fields.specs if fields else {},
    )
    return AgentResult(success=result.success, error=result.error, state=state)
