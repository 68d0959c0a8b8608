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


async def run_in_group(
    argv: Sequence[str],
    *,
    emit: Emit,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run ``argv`` as the leader of a new process group, emitting each output line.

    Returns the exit code. If the awaiting task is cancelled (or times out), the whole
    group is killed before the cancellation propagates. The child also dies with the
    agent; its helpers are caught by the group sweep at the agent's next start.
    """
    process = await asyncio.create_subprocess_exec(
        *die_with_parent(argv),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    if on_start is not None:
        on_start(process.pid)
    try:
        if stdin is not None and process.stdin is not None:
            process.stdin.write(stdin)
            await process.stdin.drain()
            process.stdin.close()
        assert process.stdout is not None and process.stderr is not None
        await asyncio.gather(
            _pump(process.stdout, Stream.STDOUT, emit),
            _pump(process.stderr, Stream.STDERR, emit),
        )
        return await process.wait()
    finally:
        if process.returncode is None:
            kill_group(process.pid)
            await asyncio.shield(process.wait())
        else:
            kill_group(process.pid)  # helpers the leader left behind go too
