"""What an environment holds, read from its committed ``pixi.lock``.

The lock is the environment's committed state: while an operation runs the prefix is in
flux, and after a failed one it is restored to exactly what the lock says.
"""

from __future__ import annotations

from dataclasses import dataclass

from rattler import LockFile

from services.executor.workspace import Workspace
from shared.lockhash import content_hash


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    build: str
    channel: str


def locked_packages(workspace: Workspace, platform: str) -> list[InstalledPackage]:
    """The packages of the default environment for ``platform`` (the host's: the others
    are locked, not installed), sorted by name."""
    if not workspace.lockfile.is_file():
        return []
    return packages_of(LockFile.from_path(workspace.lockfile), platform)


def packages_of(lock: LockFile, platform: str) -> list[InstalledPackage]:
    environment = lock.default_environment()
    if environment is None:
        return []
    records = [
        record
        for locked in environment.platforms()
        if locked.name == platform
        for record in environment.conda_repodata_records_for_platform(locked) or []
    ]
    packages = [
        InstalledPackage(
            name=record.name.normalized,
            version=str(record.version),
            build=str(record.build),
            channel=str(record.channel or ""),
        )
        for record in records
    ]
    return sorted(packages, key=lambda package: package.name)


@dataclass(frozen=True)
class EnvironmentState:
    """What an operation result reports: packages, the two files' text and the lock's
    content hash (``shared.lockhash``)."""

    packages: list[InstalledPackage]
    manifest: str
    lockfile: str
    content_hash: str


def read_state(workspace: Workspace, platform: str) -> EnvironmentState:
    """The committed state, with the packages installed for ``platform``; empty for an
    environment that does not exist (any more)."""
    if not workspace.exists():
        return EnvironmentState([], "", "", "")
    manifest = workspace.manifest.read_text()
    if not workspace.lockfile.is_file():
        return EnvironmentState([], manifest, "", "")
    lock = LockFile.from_path(workspace.lockfile)
    lockfile = workspace.lockfile.read_text()
    return EnvironmentState(packages_of(lock, platform), manifest, lockfile, content_hash(lock))
