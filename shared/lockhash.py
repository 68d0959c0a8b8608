"""The content hash of a pixi.lock: sha256 over its package set, for every platform of its
``default`` environment. Equal package sets hash equal whatever else differs in the file
(order, formatting, the lock format's version), so an environment rolled back to an
earlier version gets that version's hash again."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import rattler

ENVIRONMENT = "default"


def content_hash(lock: rattler.LockFile) -> str:
    """sha256 (hex) of the sorted lines ``platform name version build channel``."""
    environment = lock.environment(ENVIRONMENT)
    lines = []
    if environment is not None:
        for platform in environment.platforms():
            for record in environment.conda_repodata_records_for_platform(platform) or []:
                lines.append(
                    f"{platform.name} {record.name.normalized} {record.version}"
                    f" {record.build} {record.channel or ''}"
                )
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def read_lock_text(text: str) -> rattler.LockFile:
    """A lock from its text (py-rattler reads locks from files only)."""
    with tempfile.TemporaryDirectory(prefix="darb-lock-") as directory:
        path = Path(directory) / "pixi.lock"
        path.write_text(text)
        return rattler.LockFile.from_path(path)
