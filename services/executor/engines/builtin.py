"""The ``builtin`` engine: darb's own py-rattler worker (``builtin_worker``), with a pool
of spare workers started ahead of time."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import Process
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from services.executor.builtin_worker.progress import MARK, parse
from services.executor.engines.base import (
    Operation,
    ReportProgress,
    follow_tracked,
    spawn_tracked,
)
from services.executor.fencing import fencing_fields
from services.executor.process import Emit, OutputLine, Stream, end_group
from services.executor.workspace import DataLayout

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class _Worker:
    process: Process
    result_path: Path


# Workers started ahead of time, so a burst of this many operations finds each its own.
SPARES = 2
# The pool is topped up once no operation has run for this long. Starting a worker
# (Python and rattler's import) beside an operation takes CPU from it and slows it down
# noticeably on 2 cores (see docs/benchmarks.md), and so does starting one just
# before the next operation of a quick sequence: operations closer together than this
# make the pool run dry instead.
SETTLE_SECONDS = 0.5


class BuiltinEngine:
    """Solves and installs with py-rattler in a child process (``builtin_worker``).

    Starting Python and importing rattler costs more than a small solve and install, so
    ``SPARES`` workers are started ahead of time and wait for their request on stdin.
    They are replaced while the agent is idle. Under a steady stream of operations the
    pool runs dry; from then on each operation starts the next one's worker as it
    begins (as every operation did before the pool), until the agent is idle again.
    """

    name = "builtin"

    def __init__(self, layout: DataLayout, platform: str) -> None:
        self._layout = layout
        self._platform = platform
        self._spares: deque[asyncio.Task[_Worker]] = deque()
        self._refill: asyncio.TimerHandle | None = None
        self._busy = False  # the pool ran dry: replace each worker as it is taken
        self._running = 0
        self._closed = False

    def start(self) -> None:
        """Start the spare workers (needs the running event loop)."""
        self._top_up()

    async def close(self) -> None:
        """Stop the idle spare workers; none is started after this."""
        self._closed = True
        self._cancel_refill()
        while self._spares:
            worker = await self._spares.popleft()
            await end_group(worker.process)
            self._layout.group_file(worker.process.pid).unlink(missing_ok=True)

    async def _spawn(self) -> _Worker:
        result_path = self._layout.runs / f"{uuid4().hex}.json"
        argv = [sys.executable, "-m", "services.executor.builtin_worker", "--result"]
        process = await spawn_tracked(self._layout, [*argv, str(result_path)], cwd=PROJECT_ROOT)
        return _Worker(process, result_path)

    def _top_up(self) -> None:
        self._refill = None
        self._busy = False
        while len(self._spares) < SPARES and not self._closed:
            self._spares.append(asyncio.ensure_future(self._spawn()))

    def _cancel_refill(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None

    async def _take(self) -> _Worker:
        self._cancel_refill()
        worker = None
        while self._spares and worker is None:
            worker = await self._spares.popleft()
            if worker.process.returncode is not None:  # killed while it waited
                self._layout.group_file(worker.process.pid).unlink(missing_ok=True)
                worker = None
        if worker is None:
            self._busy = True
            worker = await self._spawn()
        if self._busy and not self._spares and not self._closed:
            self._spares.append(asyncio.ensure_future(self._spawn()))
        return worker

    def _settled(self) -> None:
        """An operation ended: once none runs or starts for a while, top the pool up."""
        self._running -= 1
        self._cancel_refill()
        if not self._running and not self._closed:
            loop = asyncio.get_running_loop()
            self._refill = loop.call_later(SETTLE_SECONDS, self._top_up)

    def request_of(self, operation: Operation) -> dict[str, object]:
        return {
            "op": operation.kind,
            "workspace": str(operation.workspace.root),
            "cache_dir": str(self._layout.package_cache),
            "repodata_cache_dir": str(self._layout.repodata_cache),
            "trash_dir": str(self._layout.trash),
            "platform": self._platform,
            "name": operation.name,
            "channels": list(operation.channels),
            "specs": list(operation.specs),
            "platforms": list(operation.platforms),
            "lockfile": str(operation.lockfile or ""),
            **fencing_fields(self._layout.data_dir, operation),
        }

    async def run(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None = None
    ) -> str | None:
        self._running += 1
        try:
            worker = await self._take()
        except BaseException:
            self._settled()
            raise
        try:
            exit_code = await follow_tracked(
                self._layout,
                worker.process,
                _without_reports(emit, progress),
                f"builtin engine ({operation.kind})",
                stdin=json.dumps(self.request_of(operation)).encode(),
            )
            return _worker_error(worker.result_path, exit_code)
        finally:
            worker.result_path.unlink(missing_ok=True)
            self._settled()


def _without_reports(emit: Emit, progress: ReportProgress | None) -> Emit:
    """``emit`` for the worker's log lines; its progress reports (``builtin_worker.
    progress``) go to ``progress`` instead, or nowhere."""

    def split(line: OutputLine) -> None:
        if line.stream is Stream.STDOUT and line.text.startswith(MARK):
            report = parse(line.text)
            if report is not None and progress is not None:
                progress(report)
            return
        emit(line)

    return split


def _worker_error(result_path: Path, exit_code: int) -> str | None:
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return f"the builtin engine exited with code {exit_code} without a result"
    if result.get("success") and exit_code == 0:
        return None
    return str(result.get("error") or f"the builtin engine failed with code {exit_code}")
