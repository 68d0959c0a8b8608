"""The operations a request names: create, install and remove, apply, restore, delete."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import rattler

from services.executor.builtin_worker.files import commit, roll_forward, write_staged, write_text
from services.executor.builtin_worker.install import install, label, log_changes, solve_all
from services.executor.builtin_worker.lockfile import (
    Record,
    build_lock,
    lock_records,
    read_lock,
)
from services.executor.builtin_worker.manifest import Dependency, Manifest, dependency_entry
from services.executor.builtin_worker.output import log, warn
from services.executor.builtin_worker.progress import PROGRESS, Phase
from services.executor.builtin_worker.request import Request, WorkerError
from services.executor.fencing import StaleFence, commit_guard

WriteLock = Callable[[Path], object]


async def create(request: Request) -> None:
    manifest = Manifest.of(
        request.name, request.channels, request.manifest_platforms(), request.specs
    )
    log(f"create {request.name!r} for {', '.join(manifest.platforms)}: {', '.join(request.specs)}")
    log(f"channels: {', '.join(request.channels)}")
    solution = await solve_all(request, manifest, {})
    records = solution[request.platform]
    log_changes([], records)
    await first_install(request, manifest, records, build_lock(request.channels, solution).to_path)


async def first_install(
    request: Request, manifest: Manifest, records: list[Record], write_lock: WriteLock
) -> None:
    """A new workspace: the prefix, then pixi.lock, then pixi.toml (the commit point)."""
    ws = request.workspace
    ws.root.mkdir(parents=True)
    await install(request, [], records)
    PROGRESS.report(Phase.WRITING_LOCK)
    write_staged(ws.lockfile, write_lock)
    with fenced(request):
        write_staged(ws.manifest, write_text(manifest.text()))


def next_dependencies(request: Request, current: dict[str, Dependency]) -> dict[str, Dependency]:
    """Install adds or replaces the named packages; remove drops them."""
    deps = dict(current)
    if request.op == "install":
        deps.update(dependency_entry(spec) for spec in request.specs)
    else:
        for name in request.specs:
            deps.pop(rattler.PackageName(name).normalized, None)
    return deps


async def update(request: Request) -> None:
    """Install or remove: solve every platform, then change the prefix and commit."""
    ws = request.workspace
    if not ws.exists():
        raise WorkerError(f"environment {ws.root.name} does not exist")
    manifest = Manifest.read(ws.manifest)
    if request.platform not in manifest.platforms:
        raise WorkerError(f"the environment is not for this agent's platform {request.platform}")
    locked = read_lock(ws.lockfile)
    log(f"{request.op}: {', '.join(request.specs)}")
    log(f"channels: {', '.join(manifest.channels)}")
    new_manifest = replace(manifest, dependencies=next_dependencies(request, manifest.dependencies))
    solution = await solve_all(request, new_manifest, locked)
    old, new = locked.get(request.platform, []), solution[request.platform]
    log_changes(old, new)
    lock = build_lock(manifest.channels, solution)
    await change(request, old, new, new_manifest, lock.to_path)


async def change(
    request: Request,
    old: list[Record],
    new: list[Record],
    manifest: Manifest,
    write_lock: WriteLock,
) -> None:
    """An existing workspace: mark the prefix dirty, change it, commit manifest and lock."""
    ws = request.workspace
    ws.state_dir.mkdir(exist_ok=True)
    ws.dirty_marker.touch()
    await install(request, old, new)
    PROGRESS.report(Phase.WRITING_LOCK)
    with fenced(request):
        commit(ws, manifest, write_lock)
    ws.dirty_marker.unlink()


async def apply(request: Request) -> None:
    """Make the environment what a lock says: its host records installed as they are (no
    solve), the lock written as given, the manifest from the request."""
    ws = request.workspace
    if request.lockfile is None:
        raise WorkerError("invalid request: apply needs a lockfile")
    manifest = Manifest.of(
        request.name, request.channels, request.manifest_platforms(), request.specs
    )
    records = lock_records(rattler.LockFile.from_path(request.lockfile)).get(request.platform)
    if records is None:
        raise WorkerError(f"the lock has no platform {request.platform}")
    log(f"apply: {len(records)} packages from the lock for {request.platform}")
    log(f"channels: {', '.join(request.channels)}")
    write_lock = copy_of(request.lockfile)
    if not ws.exists():
        log_changes([], records)
        await first_install(request, manifest, records, write_lock)
        return
    old = read_lock(ws.lockfile).get(request.platform, [])
    log_changes(old, records)
    await change(request, old, records, manifest, write_lock)


def copy_of(source: Path) -> WriteLock:
    """Writes ``source``'s bytes as they are."""
    return lambda path: shutil.copyfile(source, path)


async def restore(request: Request) -> None:
    """Finish or undo an interrupted operation so the prefix matches pixi.lock again."""
    ws = request.workspace
    if not ws.exists():
        raise WorkerError("pixi.toml is missing: this is an incomplete create, delete it")
    if ws.commit_marker.exists():
        log("rolling forward a committed transaction")
        roll_forward(ws)
    elif ws.txn_dir.exists():
        log("discarding an uncommitted transaction")
        shutil.rmtree(ws.txn_dir)
    if ws.dirty_marker.exists():
        records = read_lock(ws.lockfile).get(request.platform, [])
        log(f"rebuilding the prefix from pixi.lock ({len(records)} packages)")
        shutil.rmtree(ws.prefix, ignore_errors=True)
        await install(request, [], records)
        ws.dirty_marker.unlink()
    log("environment is consistent")


async def delete(request: Request) -> None:
    """Rename the workspace into the trash (the commit point), then remove it."""
    ws = request.workspace
    if not ws.root.exists():
        log("environment does not exist: nothing to delete")
        return
    records = read_lock(ws.lockfile).get(request.platform, []) if ws.lockfile.exists() else []
    PROGRESS.report(Phase.REMOVING, (0, len(records)))
    for record in records:
        log(f"removing {label(record)}")
    request.trash_dir.mkdir(parents=True, exist_ok=True)
    trash = request.trash_dir / f"{ws.root.name}.{secrets.token_hex(4)}"
    with fenced(request):
        ws.root.rename(trash)
    log(f"deleted environment {ws.root.name}")
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        warn(f"warning: could not empty {trash}: {exc}")
    PROGRESS.report(Phase.REMOVING, (len(records), len(records)))


@contextlib.contextmanager
def fenced(request: Request) -> Iterator[None]:
    """Around the commit point: refuse to commit once the agent has seen a higher fencing
    token for the environment (another control plane took it over); the lock held
    through the commit orders it before any later raise of the token."""
    try:
        with commit_guard(request.fence_file, request.workspace.root.name, request.fence_token):
            yield
    except StaleFence as exc:
        log(f"not committing: {exc}")
        raise WorkerError(str(exc)) from exc


HANDLERS = {
    "create": create,
    "install": update,
    "remove": update,
    "apply": apply,
    "restore": restore,
    "delete": delete,
}
