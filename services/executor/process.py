"""Run a command in its own process group and stream its output line by line.

Package managers spawn helpers of their own; a process group lets the agent kill the
whole tree at once when the caller cancels or the operation times out. Pipes are read in
chunks and every line of a chunk carries the chunk's time: a flood costs a few Python
operations per line. Whoever consumes the lines can slow the reading down through
``FLOW_CONTROL`` so that a child printing faster than the lines travel blocks on its
full pipe instead of the agent buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from shared.subprocesses import die_with_parent

log = logging.getLogger(__name__)
MAX_LINE_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
# A group killed with SIGKILL is gone within milliseconds; one stuck in the kernel (I/O on
# a dead network file system) is not waited for longer than this.
REAP_SECONDS = 1.0


class Stream(IntEnum):
    """Values match darb.executor.v1.LogStream."""

    STDOUT = 1
    STDERR = 2


class OutputLine(NamedTuple):
    """One line of a child's output, stamped (Unix nanoseconds, whole microseconds, as
    the control plane's database keeps them) when the agent read it.

    A tuple, not a dataclass: a flood creates hundreds of thousands of them."""

    stream: Stream
    text: str
    time_ns: int


Emit = Callable[[OutputLine], None]
# Set by the consumer of the lines (in the task that runs the work): awaited after each
# chunk, it returns once there is room for more, so a full consumer stops the reading.
FLOW_CONTROL: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "darb_flow_control", default=None
)
# A str of this many characters may take MAX_LINE_BYTES in UTF-8; shorter ones never do.
_SAFE_CHARS = MAX_LINE_BYTES // 4


def line_of(stream: Stream, text: str) -> OutputLine:
    """An output line stamped now; also used for lines the agent itself reports."""
    return OutputLine(stream, text, _now())


async def _pump(reader: asyncio.StreamReader, stream: Stream, emit: Emit) -> None:
    """Split a pipe into lines as bytes arrive; overlong lines are cut, never buffered whole."""
    room = FLOW_CONTROL.get()
    pending = b""
    while chunk := await reader.read(READ_CHUNK):
        now = _now()
        data = pending + chunk if pending else chunk
        end = data.rfind(b"\n")
        if end >= 0:
            # A newline byte is never part of a multi-byte UTF-8 character, so decoding
            # the complete lines at once equals decoding each one.
            for text in _text(data[:end]).split("\n"):
                emit(OutputLine(stream, _fit(text), now))
            data = data[end + 1 :]
        if len(data) > MAX_LINE_BYTES:
            emit(OutputLine(stream, _decode(data[:MAX_LINE_BYTES]) + " [line cut]", now))
            data = b""
        pending = data
        if room is not None:
            await room()
    if pending:
        emit(line_of(stream, _decode(pending)))


def _now() -> int:
    return time.time_ns() // 1000 * 1000


def _fit(text: str) -> str:
    """The line without trailing CRs, cut to MAX_LINE_BYTES like ``_decode``."""
    if len(text) > _SAFE_CHARS:
        return _decode(text.encode("utf-8", errors="replace"))
    return text.rstrip("\r")


def _decode(raw: bytes) -> str:
    return _text(raw[:MAX_LINE_BYTES]).rstrip("\r")


def _text(raw: bytes) -> str:
    """Output as text: bytes that are not UTF-8, and NUL (which no PostgreSQL text can
    hold), become U+FFFD, so the lines watchers see are the lines stored."""
    text = raw.decode("utf-8", errors="replace")
    return text.replace("\0", "\ufffd") if "\0" in text else text


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
        *die_with_parent(argv, "KILL"),
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
        await end_group(process)  # on cancel the work; on success helpers left behind


async def end_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the group led by ``process`` and wait until the leader is reaped, for at
    most ``REAP_SECONDS``.

    What is left in its pipes is read and dropped: asyncio's ``wait()`` returns only once
    the pipes are closed as well, and a pipe whose reader stopped at a full buffer (the
    line consumer was slow, see ``FLOW_CONTROL``) is never read to its end otherwise, so
    the wait would never return.
    """
    kill_group(process.pid)
    if process.stdin:
        process.stdin.close()
    try:
        async with asyncio.timeout(REAP_SECONDS):
            await asyncio.gather(_discard(process.stdout), _discard(process.stderr))
            await process.wait()
    except TimeoutError:
        log.warning("process group %d still not gone %gs after SIGKILL", process.pid, REAP_SECONDS)


async def _discard(reader: asyncio.StreamReader | None) -> None:
    if reader is not None:
        while await reader.read(READ_CHUNK):
            pass
