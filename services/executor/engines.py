"""Engines: the seam between an operation and the package manager that carries it out.

``builtin`` runs darb's own py-rattler worker; ``cli`` drives the ``pixi`` binary. Both
run their work as child process groups through ``run_in_group`` and report output lines
through ``emit``; ``run`` returns an error message, or None on success.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import uuid4

from services.executor.process import Emit, OutputLine, Stream, line_of, run_in_group
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


async def run_tracked(
    layout: DataLayout, argv: Sequence[str], emit: Emit, what: str, **options: Any
) -> int:
    """``run_in_group`` that logs the child's pid and records its group while it runs."""
    started: list[int] = []

    def on_start(pid: int) -> None:
        started.append(pid)
        layout.group_file(pid).touch()
        emit(line_of(Stream.STDOUT, f"darb: {what} started (pid {pid})"))

    try:
        return await run_in_group(
            argv, emit=emit, env=child_environment(), on_start=on_start, **options
        )
    finally:
        for pid in started:
            layout.group_file(pid).unlink(missing_ok=True)


class BuiltinEngine:
    """Solves and installs with py-rattler in a child process (``builtin_worker``)."""

    name = "builtin"

    def __init__(self, layout: DataLayout, platform: str) -> None:
        self._layout = layout
        self._platform = platform

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
        result_path = self._layout.runs / f"{uuid4().hex}.json"
        argv = [sys.executable, "-m", "services.executor.builtin_worker"]
        try:
            exit_code = await run_tracked(
                self._layout,
                [*argv, "--result", str(result_path)],
                emit,
                f"builtin engine ({operation.kind})",
                stdin=json.dumps(self.request_of(operation)).encode(),
                cwd=PROJECT_ROOT,
            )
            return _worker_error(result_path, exit_code)
        finally:
            result_path.unlink(missing_ok=True)


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
            exit_code = await run_tracked(self._layout, argv, keep_tail, f"pixi {argv[1]}")
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
