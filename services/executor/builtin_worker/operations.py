"""The operations a request names: create, install and remove, restore, delete."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import replace

import rattler

from services.executor.builtin_worker.files import commit, roll_forward, write_staged, write_text
from services.executor.builtin_worker.install import install, label, log_changes, solve_all
from services.executor.builtin_worker.lockfile import build_lock, read_lock
from services.executor.builtin_worker.manifest import Dependency, Manifest, dependency_entry
from services.executor.builtin_worker.output import log, warn
from services.executor.builtin_worker.request import Request, WorkerError


async def create(request: Request) -> None:
    ws = request.workspace
    manifest = Manifest.of(
        request.name, request.channels, request.manifest_platforms(), request.specs
    )
    log(f"create {request.name!r} for {', '.join(manifest.platforms)}: {', '.join(request.specs)}")
    log(f"channels: {', '.join(request.channels)}")
    solution = await solve_all(request, manifest, {})
    records = solution[request.platform]
    log_changes([], records)
    ws.root.mkdir(parents=True)
    await install(request, [], records)
    write_staged(ws.lockfile, build_lock(request.channels, solution).to_path)
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
    ws.state_dir.mkdir(exist_ok=True)
    ws.dirty_marker.touch()
    await install(request, old, new)
    commit(ws, new_manifest, build_lock(manifest.channels, solution))
    ws.dirty_marker.unlink()


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
    if ws.lockfile.exists():
        for record in read_lock(ws.lockfile).get(request.platform, []):
            log(f"removing {label(record)}")
    request.trash_dir.mkdir(parents=True, exist_ok=True)
    trash = request.trash_dir / f"{ws.root.name}.{secrets.token_hex(4)}"
    ws.root.rename(trash)
    log(f"deleted environment {ws.root.name}")
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        warn(f"warning: could not empty {trash}: {exc}")


HANDLERS = {
    "create": create,
    "install": update,
    "remove": update,
    "restore": restore,
    "delete": delete,
}
