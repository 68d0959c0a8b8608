"""Engines: the seam between an operation and the package manager that carries it out.

``builtin`` runs darb's own py-rattler worker; ``cli`` drives the ``pixi`` binary. Both
run their work as child process groups (``spawn_in_group``) and report output lines
through ``emit``; ``run`` returns an error message, or None on success.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from asyncio.subprocess import Process
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import uuid4

from services.executor.process import (
    Emit,
    OutputLine,
    Stream,
    end_group,
    follow_group,
    line_of,
    spawn_in_group,
)
from services.executor.workspace import DataLayout, Workspace

OperationKind = Literal["create", "install", "remove", "delete", "restore"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Variables a package manager never needs; the agent token above all stays in the agent.
SECRET_VARIABLES = ("DARB_AGENT_TOKEN", "DARB_ADMIN_PASSWORD", "DARB_DATABASE_URL")


@dataclass(frozen=True)
class Operation:
    """One unit of work on one environment; specs are already validated."""

    kind: OperationKind
    workspace: Workspace
    name: str = ""
    channels: tuple[str, ...] = ()
    specs: tuple[str, ...] = field(default=())


class Engine(Protocol):
    name: str

    async def run(self, operation: Operation, emit: Emit) -> str | None:
        """Carry out the operation; the error message, or None on success."""
        ...


def child_environment() -> dict[str, str]:
    """The agent's environment without secrets, with unbuffered Python output."""
    env = {key: value for key, value in os.environ.items() if key not in SECRET_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def spawn_tracked(layout: DataLayout, argv: Sequence[str], **options: Any) -> Process:
    """Spawn a process group and record it, so a restarted agent can kill what it left."""
    process = await spawn_in_group(argv, env=child_environment(), **options)
    layout.group_file(process.pid).touch()
    return process


async def follow_tracked(
    layout: DataLayout, process: Process, emit: Emit, what: str, stdin: bytes = b""
) -> int:
    """Log the child's pid, stream its lines to the end, then forget its group."""
    emit(line_of(Stream.STDOUT, f"darb: {what} started (pid {process.pid})"))
    try:
        return await follow_group(process, emit=emit, stdin=stdin)
    finally:
        layout.group_file(process.pid).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Worker:
    process: Process
    result_path: Path


# Workers started ahead of time, so a burst of this many operations finds each its own.
SPARES = 2
# The pool is topped up once no operation has run for this long. Starting a worker
# (Python and rattler's import, ~0.27 s of CPU) beside an operation slows it down (on 2
# cores a warm create of 100 packages took ~25% longer), and so does starting one just
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
        }

    async def run(self, operation: Operation, emit: Emit) -> str | None:
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
                emit,
                f"builtin engine ({operation.kind})",
                stdin=json.dumps(self.request_of(operation)).encode(),
            )
            return _worker_error(worker.result_path, exit_code)
        finally:
            worker.result_path.unlink(missing_ok=True)
            self._settled()


def _worker_error(result_path: Path, exit_code: int) -> str | None:
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return f"the builtin engine exited with code {exit_code} without a result"
    if result.get("success") and exit_code == 0:
        return None
    return str(result.get("error") or f"the builtin engine failed with code {exit_code}")


class PixiCliEngine:
    """Drives the ``pixi`` binary; user specs always follow ``--`` so none reads as a flag.

    pixi changes pixi.toml and pixi.lock itself, so before each change the two files are
    copied to ``.darb/backup``; a failed or cancelled change puts them back and re-syncs
    the prefix with ``pixi install --frozen``. Deleting is the same for every engine and
    is left to the builtin worker.
    """

    name = "cli"

    def __init__(
        self, layout: DataLayout, pixi: str, platform: str, builtin: BuiltinEngine
    ) -> None:
        self._layout = layout
        self._pixi = pixi
        self._platform = platform
        self._builtin = builtin

    def commands(self, operation: Operation) -> list[list[str]]:
        """The pixi invocations an operation consists of, in order."""
        workspace, manifest = operation.workspace, str(operation.workspace.manifest)
        if operation.kind == "create":
            channels = [arg for channel in operation.channels for arg in ("--channel", channel)]
            init = [self._pixi, "init", "--format", "pixi", *channels]
            init += ["--platform", self._platform, str(workspace.root)]
            add = [self._pixi, "add", "--manifest-path", manifest, "--", *operation.specs]
            return [init, add]
        if operation.kind in ("install", "remove"):
            verb = "add" if operation.kind == "install" else "remove"
            return [[self._pixi, verb, "--manifest-path", manifest, "--", *operation.specs]]
        if operation.kind == "restore":
            return [[self._pixi, "install", "--manifest-path", manifest, "--frozen"]]
        raise ValueError(f"the pixi CLI engine has no {operation.kind!r} command")

    async def run(self, operation: Operation, emit: Emit) -> str | None:
        if operation.kind == "delete":
            return await self._builtin.run(operation, emit)
        if operation.kind == "restore":
            _restore_backup(operation.workspace)
        elif operation.kind != "create":
            _take_backup(operation.workspace)
        error = await self._run_all(self.commands(operation), emit)
        if error is None:
            _drop_backup(operation.workspace)
        return error

    async def _run_all(self, commands: Sequence[list[str]], emit: Emit) -> str | None:
        stderr_tail: deque[str] = deque(maxlen=20)

        def keep_tail(line: OutputLine) -> None:
            if line.stream is Stream.STDERR:
                stderr_tail.append(line.text)
            emit(line)

        for argv in commands:
            process = await spawn_tracked(self._layout, argv)
            exit_code = await follow_tracked(self._layout, process, keep_tail, f"pixi {argv[1]}")
            if exit_code != 0:
                detail = "\n".join(stderr_tail).strip()
                return f"pixi {argv[1]} failed with code {exit_code}" + (
                    f": {detail}" if detail else ""
                )
        return None


def _backup_dir(workspace: Workspace) -> Path:
    return workspace.state_dir / "backup"


def _take_backup(workspace: Workspace) -> None:
    backup = _backup_dir(workspace)
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    for source in (workspace.manifest, workspace.lockfile):
        if source.is_file():
            shutil.copy2(source, backup / source.name)
    workspace.dirty_marker.touch()


def _restore_backup(workspace: Workspace) -> None:
    backup = _backup_dir(workspace)
    for saved in (backup / "pixi.toml", backup / "pixi.lock"):
        if saved.is_file():
            os.replace(saved, workspace.root / saved.name)


def _drop_backup(workspace: Workspace) -> None:
    shutil.rmtree(_backup_dir(workspace), ignore_errors=True)
    workspace.dirty_marker.unlink(missing_ok=True)


def available_engines() -> dict[str, str | None]:
    """Engine name -> what it needs on this host (the pixi path), for those available."""
    engines: dict[str, str | None] = {"builtin": None}
    pixi = shutil.which("pixi")
    if pixi:
        engines["cli"] = pixi
    return engines
