"""The primary control plane's disk chores: dropping old job logs (log retention) and,
with ``/metrics`` on, the agents' disk gauges and the environment counts.

Log retention: every ``DARB_LOG_RETENTION_INTERVAL`` the lines of jobs that ended more
than ``DARB_LOG_RETENTION_DAYS`` ago are replaced by one line saying the log was dropped
(``repo.disk``), a batch of jobs per transaction, so a big backlog never holds locks for
long. Job rows and versions stay. Several control planes on one database take turns (an
advisory lock); 0 days keeps logs forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from prometheus_client import Gauge

from services.api.database.db import Database
from services.api.metrics import REFRESH_INTERVAL, Metrics
from services.api.repo import disk
from services.api.scheduling.agent_disk import AgentDiskClient, each_agent
from shared.config import ApiSettings

log = logging.getLogger(__name__)


class DiskGauges:
    """The agents' free disk and package cache (from GetInfo), and live environments by
    agent and status (from the database)."""

    def __init__(self, metrics: Metrics) -> None:
        reg = metrics.registry
        self.free = Gauge(
            "darb_agent_free_bytes",
            "Free bytes of the agent's data directory's file system, at its last answer.",
            ["agent"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.cache = Gauge(
            "darb_agent_package_cache_bytes",
            "Bytes of the agent's package cache, as the agent last measured it.",
            ["agent"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.environments = Gauge(
            "darb_environments",
            "Live environments, by the agent they are bound to and their status.",
            ["agent", "status"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._counted: set[tuple[str, str]] = set()

    def set_counts(self, counts: dict[tuple[str, str], int]) -> None:
        """A pair counted before and gone now reads 0."""
        for agent, status in self._counted | set(counts):
            self.environments.labels(agent, status.lower()).set(counts.get((agent, status), 0))
        self._counted |= set(counts)

    def set_agent(self, agent: str, free: int | None, cache: int | None) -> None:
        """None: the agent did not answer, and its values go (agent_up says why)."""
        for gauge, value in ((self.free, free), (self.cache, cache)):
            if value is None or value < 0:
                with contextlib.suppress(KeyError):
                    gauge.remove(agent)
            else:
                gauge.labels(agent).set(value)


class Housekeeping:
    def __init__(self, settings: ApiSettings, db: Database, metrics: Metrics | None) -> None:
        self._settings = settings
        self._db = db
        self._gauges = DiskGauges(metrics) if metrics is not None else None
        self._client = AgentDiskClient(settings.agent_token, settings.tls)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._settings.log_retention_days > 0:
            self._tasks.append(asyncio.create_task(self._retention(), name="darb-log-retention"))
        if self._gauges is not None:
            self._tasks.append(asyncio.create_task(self._refresh(), name="darb-disk-gauges"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()

    async def drop_old_logs(self) -> int:
        """One round: every batch of old logs; the number of jobs whose log went."""
        days = self._settings.log_retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        dropped, after = 0, 0
        while True:
            batch = await self._db.run(disk.drop_old_logs, cutoff, days, after)
            if not batch or not batch[0]:  # another control plane is at it, or none left
                break
            dropped += batch[0]
            after = batch[1]
            await asyncio.sleep(0)
        if dropped:
            log.info("log retention: dropped the logs of %d jobs older than %g days", dropped, days)
        return dropped

    async def _retention(self) -> None:
        failing = False
        while True:
            try:
                await self.drop_old_logs()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("log retention failed (%s: %s)", type(exc).__name__, exc)
                failing = True
            await asyncio.sleep(self._settings.log_retention_interval)

    async def _refresh(self) -> None:
        assert self._gauges is not None
        failing = False
        while True:
            try:
                self._gauges.set_counts(await self._db.read(disk.environment_counts))
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("counting environments for metrics failed (%s)", type(exc).__name__)
                failing = True
            for agent, info, _ in await each_agent(self._settings.executors, self._client.info):
                if info is None:
                    self._gauges.set_agent(agent, None, None)
                else:
                    self._gauges.set_agent(agent, info.free_bytes, info.package_cache_bytes)
            await asyncio.sleep(REFRESH_INTERVAL)
