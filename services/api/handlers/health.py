"""gRPC health: SERVING only while the database answers."""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from services.api.database.db import Database

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """Sets the overall status and each service's from a database ping."""

    def __init__(
        self, servicer: health.aio.HealthServicer, database: Database, services: list[str]
    ) -> None:
        self._servicer = servicer
        self._db = database
        self._names = ["", *services]
        self._up: bool | None = None

    async def check(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._db.ping(), timeout)
            up = True
        except Exception:
            up = False
        if up != self._up:
            was, self._up = self._up, up
            if not up:
                log.warning("database unreachable: health is NOT_SERVING")
            elif was is not None:
                log.info("database reachable again: health is SERVING")
            for name in self._names:
                await self._servicer.set(name, SERVING if up else NOT_SERVING)

    async def shutting_down(self) -> None:
        """NOT_SERVING from the start of a shutdown, so balancers stop sending calls."""
        await self._servicer.enter_graceful_shutdown()

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.check(timeout=max(interval, 1.0))
