"""What every engine shares: the operation, the engine's protocol, spawning its work."""

from __future__ import annotations

import os
from asyncio.subprocess import Process
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from services.executor.builtin_worker.progress import Report
from services.executor.process import Emit, Stream, follow_group, line_of, spawn_in_group
from services.executor.workspace import DataLayout, Workspace

# Takes an engine's progress reports (phase, packages and bytes done of total).
ReportProgress = Callable[[Report], None]
OperationKind = Literal["create", "install", "remove", "delete", "restore", "apply"]
# Variables a package manager never needs; the agent token above all stays in the agent.
SECRET_VARIABLES = ("DARB_AGENT_TOKEN", "DARB_ADMIN_PASSWORD", "DARB_DATABASE_URL")


@dataclass(frozen=True)
class Operation:
    """One unit of work on one environment; specs are already validated. ``platforms`` are
    the manifest's (the host's first); ``lockfile`` is the staged lock an apply writes.
    ``fence_token`` is the claim's fencing token (``services/executor/fencing.py``),
    checked again at the commit point; a restore is not fenced."""

    kind: OperationKind
    workspace: Workspace
    name: str = ""
    channels: tuple[str, ...] = ()
    specs: tuple[str, ...] = field(default=())
    platforms: tuple[str, ...] = ()
    lockfile: Path | None = None
    fence_token: int = 0


class Engine(Protocol):
    name: str

    async def run(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None = None
    ) -> str | None:
        """Carry out the operation; the error message, or None on success. Progress
        reports, if the engine makes any, go to ``progress`` (dropped without one)."""
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
