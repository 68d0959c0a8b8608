"""Calls to the agents' DiskService and GetInfo for the disk features (usage, the sweep,
the disk metrics), from any control plane process: channels of its own, with the agent
token and TLS of the settings, apart from the dispatcher's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from darb.executor.v1 import disk_pb2, disk_pb2_grpc, executor_pb2, executor_pb2_grpc
from services.api.scheduling.executor_client import CHANNEL_OPTIONS
from shared.config import TlsSettings
from shared.tls import channel_credentials

T = TypeVar("T")
# Measuring a big cache walks every file; a sweep may wait for operations to end.
USAGE_TIMEOUT = 120.0
SWEEP_TIMEOUT = 90.0
INFO_TIMEOUT = 5.0


class AgentDiskClient:
    def __init__(self, token: str, tls: TlsSettings) -> None:
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, addr: str) -> grpc.aio.Channel:
        if addr not in self._channels:
            credentials = channel_credentials(self._tls)
            self._channels[addr] = (
                grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
                if credentials is None
                else grpc.aio.secure_channel(addr, credentials, options=CHANNEL_OPTIONS)
            )
        return self._channels[addr]

    async def usage(self, addr: str) -> disk_pb2.GetUsageResponse:
        stub = disk_pb2_grpc.DiskServiceStub(self._channel(addr))
        request = disk_pb2.GetUsageRequest()
        return await stub.GetUsage(request, metadata=self._metadata, timeout=USAGE_TIMEOUT)

    async def sweep(self, addr: str) -> disk_pb2.SweepPackageCacheResponse:
        stub = disk_pb2_grpc.DiskServiceStub(self._channel(addr))
        request = disk_pb2.SweepPackageCacheRequest()
        return await stub.SweepPackageCache(request, metadata=self._metadata, timeout=SWEEP_TIMEOUT)

    async def info(self, addr: str) -> executor_pb2.GetInfoResponse:
        stub = executor_pb2_grpc.ExecutorServiceStub(self._channel(addr))
        request = executor_pb2.GetInfoRequest()
        return await stub.GetInfo(request, metadata=self._metadata, timeout=INFO_TIMEOUT)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def each_agent(
    agents: Sequence[str], call: Callable[[str], Awaitable[T]]
) -> list[tuple[str, T | None, str]]:
    """``call`` on every agent at once: (agent, answer or None, error text)."""

    async def one(addr: str) -> tuple[str, Any, str]:
        try:
            return addr, await call(addr), ""
        except grpc.aio.AioRpcError as exc:
            return addr, None, f"{exc.code().name}: {exc.details() or ''}"

    return list(await asyncio.gather(*(one(addr) for addr in agents)))
