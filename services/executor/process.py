"""Run a command in its own process group and stream its output line by line.

Package managers spawn helpers of their own; a process group lets the agent kill the
whole tree at once when the caller cancels or the operation times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

MAX_LINE_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024


class Stream(IntEnum):
    """Values match darb.executor.v1.LogStream."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class OutputLine:
    """One line of a child's output, stamped when the agent read it."""

    stream: Stream
    text: str
    time: datetime


Emit = Callable[[OutputLine], None]


def line_of(stream: Stream, text: str) -> OutputLine:
    """An output line stamped now; also used for lines the agent itself reports."""
    return OutputLine(stream, text, datetime.now(UTC))


async def _pump(reader: asyncio.StreamReader, stream: Stream, emit: Emit) -> None:
    """Split a pipe into lines as bytes arrive; overlong lines are cut, never buffered whole."""
    pending = bytearray()
    while chunk := await reader.read(READ_CHUNK):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            emit(line_of(stream, _decode(pending[:end])))
            del pending[: end + 1]
        if len(pending) > MAX_LINE_BYTES:
            emit(line_of(stream, _decode(pending[:MAX_LINE_BYTES]) + " [line cut]"))
            pending.clear()
    if pending:
        emit(line_of(stream, _decode(pending)))


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw[:MAX_LINE_BYTES]).decode("utf-8", errors="replace").rstrip("\r")


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` so the kernel kills the child if the agent itself dies (Linux)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def kill_group(pid: int) -> None:
    """SIGKILL every process in the group led by ``pid``; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def spawn_in_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` as the leader of a new process group, with piped stdin and output.

    The child dies with the agent (parent-death signal); helpers it spawned are caught by
    the group sweep at the agent's next start.
    """
    return await asyncio.create_subprocess_exec(
        *die_with_parent(argv),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    """Write the child's input; a child that exits without reading it (``pixi init``
    reads nothing) closes the pipe, which is its business, not an error of ours."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
    pipe.close()


async def follow_group(
    process: asyncio.subprocess.Process, *, emit: Emit, stdin: bytes = b""
) -> int:
    """Feed ``stdin`` to a spawned group leader and emit its output lines until it exits.

    Returns the exit code. If the awaiting task is cancelled (or times out), the whole
    group is killed before the cancellation propagates.
    """
    try:
        assert process.stdin and process.stdout and process.stderr
        await _feed(process.stdin, stdin)
        await asyncio.gather(
            _pump(process.stdout, Stream.STDOUT, emit),
            _pump(process.stderr, Stream.STDERR, emit),
        )
        return await process.wait()
    finally:
        kill_group(process.pid)  # on cancel the work; on success helpers left behind
        if process.returncode is None:
            await asyncio.shield(process.wait())
