"""What an environment holds, read from its committed ``pixi.lock``.

The lock is the environment's committed state: while an operation runs the prefix is in
flux, and after a failed one it is restored to exactly what the lock says.
"""

from __future__ import annotations

from dataclasses import dataclass

from rattler import LockFile

from services.executor.workspace import Workspace


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    build: str
    channel: str


def locked_packages(workspace: Workspace) -> list[InstalledPackage]:
    """The packages of the default environment for the lock's platform, sorted by name."""
    if not workspace.lockfile.is_file():
        return []
    lock = LockFile.from_path(workspace.lockfile)
    environment = lock.default_environment()
    if environment is None:
        return []
    packages = []
    for platform in environment.platforms():
        for record in environment.conda_repodata_records_for_platform(platform) or []:
            packages.append(
                InstalledPackage(
                    name=record.name.normalized,
                    version=str(record.version),
                    build=str(record.build),
                    channel=str(record.channel or ""),
                )
            )
    return sorted(packages, key=lambda package: package.name)


@dataclass(frozen=True)
class EnvironmentState:
    """What an operation result reports: packages and the two files' text."""

    packages: list[InstalledPackage]
    manifest: str
    lockfile: str


def read_state(workspace: Workspace) -> EnvironmentState:
    """The committed state; empty for an environment that does not exist (any more)."""
    if not workspace.exists():
        return EnvironmentState([], "", "")
    lockfile = workspace.lockfile.read_text() if workspace.lockfile.is_file() else ""
    return EnvironmentState(locked_packages(workspace), workspace.manifest.read_text(), lockfile)
