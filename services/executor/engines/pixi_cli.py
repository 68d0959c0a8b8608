"""The ``cli`` engine: drives the ``pixi`` binary, with a backup of pixi.toml and pixi.lock
to put back when a change fails."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import deque
from pathlib import Path

from rattler import Subdir

from services.executor import fencing
from services.executor.builtin_worker.manifest import Manifest
from services.executor.builtin_worker.request import WorkerError
from services.executor.engines.base import (
    Operation,
    ReportProgress,
    follow_tracked,
    spawn_tracked,
)
from services.executor.engines.builtin import BuiltinEngine
from services.executor.engines.pixi_progress import PrefixProgress, follow_with_progress
from services.executor.process import Emit, OutputLine, Stream
from services.executor.workspace import DataLayout, Workspace

# The pixi commands that install into the prefix (``init`` only writes pixi.toml).
INSTALLING = frozenset({"add", "remove", "install"})


class PixiCliEngine:
    """Drives the ``pixi`` binary; user specs always follow ``--`` so none reads as a flag.

    pixi changes pixi.toml and pixi.lock itself, so before each change the two files are
    copied to ``.darb/backup``; a failed or cancelled change puts them back and re-syncs
    the prefix with ``pixi install --frozen``. An apply writes both files itself (darb's
    manifest, the given lock) and installs with ``pixi install --frozen``. Deleting is the
    same for every engine and is left to the builtin worker.
    """

    name = "cli"

    def __init__(self, layout: DataLayout, pixi: str, builtin: BuiltinEngine) -> None:
        self._layout = layout
        self._pixi = pixi
        self._builtin = builtin
        self._platform = str(Subdir.current())  # the prefix pixi installs is the host's

    def commands(self, operation: Operation) -> list[list[str]]:
        """The pixi invocations an operation consists of, in order."""
        workspace, manifest = operation.workspace, str(operation.workspace.manifest)
        if operation.kind == "create":
            channels = [arg for channel in operation.channels for arg in ("--channel", channel)]
            platforms = [
                arg for platform in operation.platforms for arg in ("--platform", platform)
            ]
            init = [self._pixi, "init", "--format", "pixi", *channels, *platforms]
            init.append(str(workspace.root))
            add = [self._pixi, "add", "--manifest-path", manifest, "--", *operation.specs]
            return [init, add]
        if operation.kind in ("install", "remove"):
            verb = "add" if operation.kind == "install" else "remove"
            return [[self._pixi, verb, "--manifest-path", manifest, "--", *operation.specs]]
        if operation.kind in ("restore", "apply"):
            return [[self._pixi, "install", "--manifest-path", manifest, "--frozen"]]
        raise ValueError(f"the pixi CLI engine has no {operation.kind!r} command")

    async def run(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None = None
    ) -> str | None:
        """Progress (a delete's is the builtin worker's) comes from what pixi writes, not
        from its terminal bars (``pixi_progress``): while ``pixi add``/``remove``/``install
        --frozen`` runs, its lock gives the totals and the prefix's ``conda-meta`` records
        the packages and bytes installed so far; a last report follows when it ends."""
        if operation.kind == "delete":
            return await self._builtin.run(operation, emit, progress)
        if operation.kind == "apply":
            return await self._apply(operation, emit, progress)
        if operation.kind == "create":
            return await self._create(operation, emit, progress)
        if operation.kind == "restore":
            _restore_backup(operation.workspace)
        else:
            _take_backup(operation.workspace)
        error = await self._run_all(operation, emit, progress)
        if error is None and operation.kind == "restore":  # not fenced: it commits nothing new
            _drop_backup(operation.workspace)
        elif error is None:
            error = await self._commit(operation)
        return error

    async def _create(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None
    ) -> str | None:
        """``pixi init`` writes pixi.toml first, so a create that failed, was stopped or
        was fenced out removes the workspace: only a committed create leaves one (as
        with the builtin engine, whose pixi.toml comes last)."""
        error: str | None = "the create did not finish"
        try:
            error = await self._run_all(operation, emit, progress)
            if error is None:
                error = await self._commit(operation)
        finally:
            if error is not None:
                shutil.rmtree(operation.workspace.root, ignore_errors=True)
        return error

    async def _commit(self, operation: Operation) -> str | None:
        """The commit point: drop the backup (a create: keep the workspace) unless another
        control plane took the environment over meanwhile (a higher fencing token); then
        the backup stays for the repair to put back (a create's workspace goes)."""
        fence_file = fencing.fence_file(self._layout.data_dir, operation.workspace.root.name)

        def commit() -> None:
            token = operation.fence_token
            with fencing.commit_guard(fence_file, operation.workspace.root.name, token):
                if operation.kind != "create":
                    _drop_backup(operation.workspace)

        try:
            await asyncio.to_thread(commit)
        except fencing.StaleFence as exc:
            return str(exc)
        return None

    async def _apply(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None
    ) -> str | None:
        """Write darb's manifest and the given lock, then let pixi install the lock as is.
        A failed apply onto an environment is undone like a failed change (the backup); one
        that would have created it leaves nothing."""
        workspace = operation.workspace
        assert operation.lockfile is not None, "the servicer stages the lock of an apply"
        try:
            manifest = Manifest.of(
                operation.name, operation.channels, operation.platforms, operation.specs
            )
        except WorkerError as exc:
            return str(exc)
        new = not workspace.exists()
        _take_backup(workspace)
        error: str | None = "the apply did not finish"
        try:
            shutil.copyfile(operation.lockfile, workspace.lockfile)
            workspace.manifest.write_text(manifest.text())
            error = await self._run_all(operation, emit, progress)
            if error is None:
                error = await self._commit(operation)
        finally:
            if error is not None and new:
                shutil.rmtree(workspace.root, ignore_errors=True)
        return error

    async def _run_all(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None
    ) -> str | None:
        stderr_tail: deque[str] = deque(maxlen=20)

        def keep_tail(line: OutputLine) -> None:
            if line.stream is Stream.STDERR:
                stderr_tail.append(line.text)
            emit(line)

        for argv in self.commands(operation):
            prefix = await self._prefix_progress(operation, argv[1], progress)
            process = await spawn_tracked(self._layout, argv)
            follow = follow_tracked(self._layout, process, keep_tail, f"pixi {argv[1]}")
            if prefix is None or progress is None:
                exit_code = await follow
            else:
                exit_code = await follow_with_progress(follow, prefix, progress)
            if exit_code != 0:
                detail = "\n".join(stderr_tail).strip()
                return f"pixi {argv[1]} failed with code {exit_code}" + (
                    f": {detail}" if detail else ""
                )
        return None

    async def _prefix_progress(
        self, operation: Operation, verb: str, progress: ReportProgress | None
    ) -> PrefixProgress | None:
        """What reports a command's progress, noted before it starts: None for ``pixi
        init`` (it installs nothing) and when nobody takes reports (a repair)."""
        if progress is None or verb not in INSTALLING:
            return None
        lock_given = verb == "install"  # --frozen: darb's lock, already in place
        return await asyncio.to_thread(
            PrefixProgress, operation.workspace, self._platform, lock_given
        )


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
