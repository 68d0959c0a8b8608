"""The agent's DiskService: its disk usage and the package-cache sweep (``disk``)."""

from __future__ import annotations

from typing import Any

from darb.executor.v1 import disk_pb2 as pb
from darb.executor.v1 import disk_pb2_grpc
from services.executor.disk import DiskKeeper
from services.executor.errors import maps_errors

# An asked-for sweep waits this long at most for a moment without operations (less when
# the call's deadline is nearer).
SWEEP_WAIT_SECONDS = 60.0


class DiskServicer(disk_pb2_grpc.DiskServiceServicer):
    def __init__(self, keeper: DiskKeeper) -> None:
        self._keeper = keeper

    @maps_errors
    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        usage = await self._keeper.usage()
        return pb.GetUsageResponse(
            package_cache_bytes=usage.package_cache_bytes,
            package_cache_packages=usage.package_cache_packages,
            environments_bytes=usage.environments_bytes,
            environments=[
                pb.EnvironmentUsage(environment_id=environment_id, bytes=size)
                for environment_id, size in usage.environments.items()
            ],
            free_bytes=usage.free_bytes,
            total_bytes=usage.total_bytes,
        )

    @maps_errors
    async def SweepPackageCache(
        self, request: pb.SweepPackageCacheRequest, context: Any
    ) -> pb.SweepPackageCacheResponse:
        wait = SWEEP_WAIT_SECONDS
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(min(wait, remaining - 1.0), 0.1)
        result = await self._keeper.sweep(wait)
        return pb.SweepPackageCacheResponse(
            packages_removed=result.packages_removed,
            bytes_freed=result.bytes_freed,
            packages_in_use=result.packages_in_use,
            packages_too_young=result.packages_too_young,
        )
