"""pixi.lock: built from solved records per platform, read back as records per platform."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import rattler

ENVIRONMENT = "default"
Record = rattler.RepoDataRecord
# Records per platform name, e.g. {"linux-64": [...], "osx-arm64": [...]}.
Solution = dict[str, list[Record]]


def build_lock(channels: Iterable[str], solution: Solution) -> rattler.LockFile:
    platforms = {name: rattler.LockPlatform(name) for name in solution}
    lock = rattler.LockFile(list(platforms.values()))
    lock.set_channels(ENVIRONMENT, [rattler.LockChannel(c) for c in channels])
    for name, records in solution.items():
        for record in records:
            lock.add_conda_package(ENVIRONMENT, platforms[name], record)
    return lock


def lock_records(lock: rattler.LockFile) -> Solution:
    """The records of every platform of the lock's default environment.

    The platform objects must come from the lock itself: a fresh ``LockPlatform`` passed to
    ``conda_repodata_records_for_platform`` made rattler panic.
    """
    environment = lock.environment(ENVIRONMENT)
    return {
        platform.name: (environment.conda_repodata_records_for_platform(platform) or [])
        if environment
        else []
        for platform in lock.platforms()
    }


def read_lock(path: Path) -> Solution:
    return lock_records(rattler.LockFile.from_path(path))
