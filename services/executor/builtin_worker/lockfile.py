"""pixi.lock: built from solved records, read back as records."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import rattler

ENVIRONMENT = "default"
Record = rattler.RepoDataRecord


def build_lock(
    platform: rattler.LockPlatform, channels: Iterable[str], records: list[Record]
) -> rattler.LockFile:
    lock = rattler.LockFile([platform])
    lock.set_channels(ENVIRONMENT, [rattler.LockChannel(c) for c in channels])
    for record in records:
        lock.add_conda_package(ENVIRONMENT, platform, record)
    return lock


def read_lock(path: Path) -> tuple[rattler.LockPlatform, list[Record]]:
    """The platform and records of pixi.lock.

    The platform object must come from the lock itself: a fresh ``LockPlatform`` passed to
    ``conda_repodata_records_for_platform`` made rattler panic.
    """
    lock = rattler.LockFile.from_path(path)
    platform = lock.platforms()[0]
    environment = lock.environment(ENVIRONMENT)
    records = environment.conda_repodata_records_for_platform(platform) if environment else None
    return platform, records or []
