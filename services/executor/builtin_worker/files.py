"""Writing a workspace's files so that a crash at any point leaves them complete: staged
writes, and the transaction that commits pixi.toml and pixi.lock together."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from services.executor.builtin_worker.manifest import Manifest
from services.executor.builtin_worker.output import log
from services.executor.workspace import Workspace


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_staged(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temp file and a rename, so it is never seen half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)
    log(f"wrote {path.name}")


def write_text(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text)


def roll_forward(ws: Workspace) -> None:
    """Move a committed transaction's files into place; safe to repeat after a crash."""
    for staged in (ws.txn_dir / ws.lockfile.name, ws.txn_dir / ws.manifest.name):
        if staged.exists():
            staged.replace(ws.root / staged.name)
            log(f"wrote {staged.name}")
    fsync_path(ws.root)
    shutil.rmtree(ws.txn_dir)


def commit(ws: Workspace, manifest: Manifest, write_lock: Callable[[Path], object]) -> None:
    """Stage the next manifest and the lock ``write_lock`` writes, mark them complete, then
    move them into place."""
    shutil.rmtree(ws.txn_dir, ignore_errors=True)
    ws.txn_dir.mkdir(parents=True)
    (ws.txn_dir / ws.manifest.name).write_text(manifest.text())
    write_lock(ws.txn_dir / ws.lockfile.name)
    for name in (ws.manifest.name, ws.lockfile.name):
        fsync_path(ws.txn_dir / name)
    ws.commit_marker.touch()
    fsync_path(ws.commit_marker)
    fsync_path(ws.txn_dir)
    roll_forward(ws)
