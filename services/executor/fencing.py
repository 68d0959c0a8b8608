"""Fencing tokens: the agent's durable record of the highest token seen per environment.

The control plane gives every claim of an environment a token that grows (``environments.
fence``) and sends it with each operation; a control plane that takes over a job another
one left (its lease expired) raises the token and tells the agent (``Fence``). The agent

- records the token durably before an operation changes anything (``admit``), refusing a
  lower one with ``FAILED_PRECONDITION``; the same token again is a retry of the same
  claim and is let through;
- checks it again right before the operation's commit point, holding the environment's
  fence lock through the commit (``commit_guard``), so that once ``raise_to`` returned
  no operation with a lower token can commit any more.

Files, under ``$DARB_DATA_DIR/fences/``: ``<id>`` holds the token as decimal text,
replaced with write-temp + fsync + rename + fsync of the directory; ``<id>.lock`` is the
``flock`` that orders a raise against a commit (the token file itself is replaced, so it
cannot carry the lock). The builtin worker (a child process) takes the same lock.

Token 0 means "no token" (a caller that sends none): it is admitted only while no token
was ever recorded for the environment, and never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from services.executor.durable import replace_file
from shared.errors import FailedPrecondition, Unavailable

FENCES_DIR = "fences"
# How long a raise or an admit waits for an operation that holds the lock to commit.
LOCK_SECONDS = 30.0


class StaleFence(FailedPrecondition):
    """An operation's token is lower than one the agent has seen for its environment."""


def fences_dir(data_dir: Path) -> Path:
    return data_dir / FENCES_DIR


def fence_file(data_dir: Path, environment_id: str) -> Path:
    """The token file of one environment; ``environment_id`` is validated by the caller
    (a lower-case UUID, see ``workspace.is_environment_id``)."""
    return fences_dir(data_dir) / environment_id


def stale_message(environment_id: str, token: int, recorded: int) -> str:
    return (
        f"stale fencing token {token} for environment {environment_id}: the agent has seen"
        f" {recorded} (another control plane took the environment over)"
    )


def read_token(path: Path) -> int:
    """The recorded token, 0 when none was recorded."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_SECONDS) -> Iterator[None]:
    """Holds the environment's fence lock (``<token file>.lock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"the fence lock of environment {path.name} is held; try again"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # also releases the lock


def _record(path: Path, environment_id: str, token: int) -> int:
    """Under the lock: refuse a token below the recorded one, record a higher one.
    Returns the recorded token afterwards."""
    recorded = read_token(path)
    if token < recorded:
        raise StaleFence(stale_message(environment_id, token, recorded))
    if token > recorded:
        replace_file(path, f"{token}\n")
        return token
    return recorded


def admit(data_dir: Path, environment_id: str, token: int) -> None:
    """Before an operation changes anything: record ``token`` (durably) if it is the
    highest seen, let the same one through, refuse a lower one (``StaleFence``)."""
    path = fence_file(data_dir, environment_id)
    with locked(path):
        _record(path, environment_id, token)


def raise_to(data_dir: Path, environment_id: str, token: int) -> int:
    """A takeover: record ``token`` unless a higher one is recorded (``StaleFence``).
    Once this returns, no operation with a lower token commits on this agent."""
    path = fence_file(data_dir, environment_id)
    with locked(path):
        return _record(path, environment_id, token)


def current(data_dir: Path, environment_id: str) -> int:
    return read_token(fence_file(data_dir, environment_id))


@contextlib.contextmanager
def commit_guard(path: Path | None, environment_id: str, token: int) -> Iterator[None]:
    """Around an operation's commit point: holds the fence lock and refuses to go on
    (``StaleFence``) when a higher token than the operation's was recorded meanwhile.
    ``path`` None: the operation is not fenced (e.g. a repair)."""
    if path is None:
        yield
        return
    with locked(path):
        recorded = read_token(path)
        if token < recorded:
            raise StaleFence(stale_message(environment_id, token, recorded))
        yield


class _Fenced(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def workspace(self) -> Any: ...
    @property
    def fence_token(self) -> int: ...


def fencing_fields(data_dir: Path, operation: _Fenced) -> dict[str, object]:
    """What a worker request carries to check the fence at its commit point: the token
    file and the operation's token; nothing for a restore (it commits nothing new)."""
    if operation.kind == "restore":
        return {}
    token_file = fence_file(data_dir, operation.workspace.root.name)
    return {"fence_file": str(token_file), "fence_token": operation.fence_token}


# How long a Fence waits for the operation it stopped to be rolled back.
SETTLE_SECONDS = 60.0


class Fences:
    """The agent's side of fencing: admits operations (``admit``), knows which operation
    runs on which environment with which token (``track``), and carries out a takeover's
    ``Fence`` call (``fence``)."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._running: dict[str, tuple[int, asyncio.Task[Any]]] = {}

    async def admit(self, environment_id: str, token: int) -> None:
        await asyncio.to_thread(admit, self._data_dir, environment_id, token)

    def track(self, environment_id: str, token: int, work: asyncio.Task[Any]) -> None:
        """``work`` runs the operation with ``token`` on the environment until it is done."""
        self._running[environment_id] = (token, work)

        def forget(_: object) -> None:
            if self._running.get(environment_id, (0, None))[1] is work:
                del self._running[environment_id]

        work.add_done_callback(forget)

    async def fence(
        self, environment_id: str, token: int, busy: Callable[[], bool], settle: float
    ) -> int:
        """Record ``token``, stop an operation with a lower one and wait until the
        environment is free again (the stopped operation rolled back), at most ``settle``
        seconds (then ``Unavailable``: the caller tries again). Returns the recorded token."""
        recorded = await asyncio.to_thread(raise_to, self._data_dir, environment_id, token)
        running = self._running.get(environment_id)
        if running is not None and running[0] >= token:
            return recorded  # a newer claim's operation: not ours to stop or wait for
        if running is not None:
            running[1].cancel()
        deadline = asyncio.get_running_loop().time() + settle
        while busy():
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(
                    f"environment {environment_id} is still being rolled back; fence again"
                )
            await asyncio.sleep(0.05)
        return recorded
