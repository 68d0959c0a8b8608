"""Measuring helpers: result rows, percentiles, bounded load loops, and what a process uses.

Every load loop is bounded both in calls and in seconds, so a slow or broken stack makes
``make bench`` report a poor figure instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Row:
    """One line of the table. ``met`` is None for figures shown only for context."""

    figure: str
    value: str
    target: str = "-"
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: ""}[self.met]


def target_met(value: str, target: str) -> bool | None:
    """Judges a plain ``< 150`` / ``<= 0.3`` style target (the executor bench's rows)."""
    match = re.fullmatch(r"\s*(<=|>=|<|>)\s*([\d.]+)\s*", target)
    try:
        number = float(value)
    except ValueError:
        return None
    if match is None:
        return None
    limit = float(match.group(2))
    return {
        "<": number < limit,
        "<=": number <= limit,
        ">": number > limit,
        ">=": number >= limit,
    }[match.group(1)]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: with n samples, p99 is never better than the real tail."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


@dataclass
class LoadResult:
    """Latencies (seconds) of the calls that succeeded, over ``elapsed`` wall seconds."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def run_load(
    call: Callable[[int, int], Awaitable[object]],
    clients: int,
    seconds: float,
    max_calls: int,
    rate: float | None = None,
) -> LoadResult:
    """``clients`` tasks call ``call(client, n)`` until the time or count runs out: back to
    back (a closed loop, the most the stack serves), or with ``rate`` on a schedule of
    ``rate`` calls per second in all (an open loop: a call waits only for its client's
    previous one, so latency is measured at that load, not at saturation).

    The tasks share one event loop in this process: a thread per client would spend the
    client's share of the two cores on the GIL instead of on requests.
    """
    result = LoadResult()
    numbers = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds
    interval = clients / rate if rate else 0.0

    async def client(index: int) -> None:
        due = started + index * interval / clients  # clients spread over one interval
        while time.perf_counter() < deadline and (n := next(numbers)) < max_calls:
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += interval
            sent = time.perf_counter()
            try:
                await call(index, n)
            except grpc.aio.AioRpcError as exc:
                result.errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            result.latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client(index) for index in range(clients)))
    result.elapsed = time.perf_counter() - started
    return result


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # it just ended
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process, its live children (the control
    plane's RPC workers) and the children it has reaped (an agent's worker processes,
    each of which lives for one operation), from /proc/<pid>/stat."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for each in (pid, *map(int, children)):
        fields = _stat_fields(each)
        if fields:
            total += sum(map(int, fields[11:15] if each == pid else fields[11:13]))
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time so far of every PostgreSQL process on this machine (the server the
    benchmarks use): live backends, plus what the postmaster has reaped."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            total += sum(map(int, fields[11:15]))
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this (client) process, to show what the load generator itself costs."""
    return time.process_time()


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples a process's RSS on a thread (every ``interval`` s) and keeps the peak, so
    sampling never waits behind the event loop that drives the load."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self.peak = rss_bytes(pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_bytes(self._pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self._pid))


class CpuMeter:
    """CPU used by the control plane and by this client over a ``with`` block, in cores."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.server_cores = 0.0
        self.client_cores = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), cpu_seconds(self._pid), own_cpu_seconds())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._start[0]
        self.server_cores = (cpu_seconds(self._pid) - self._start[1]) / wall
        self.client_cores = (own_cpu_seconds() - self._start[2]) / wall
