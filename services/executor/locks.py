"""Lock files a caller hands the agent (ApplyLock): staged in the data directory, where
rattler parses them (py-rattler 0.28 reads locks from files only), and checked before the
operation starts."""

from __future__ import annotations

from pathlib import Path

import rattler

from services.executor.builtin_worker.lockfile import ENVIRONMENT
from shared.config import ChannelPolicy
from shared.errors import InvalidArgument
from shared.specs import validate_package_url


def stage_lock(path: Path, text: str, platform: str, policy: ChannelPolicy) -> None:
    """Write ``text`` to ``path`` if it is a lock darb can apply on ``platform``; otherwise
    ``InvalidArgument`` saying why, and no file."""
    path.write_bytes(text.encode())
    try:
        check_lock(_parse(path), platform, policy)
    except BaseException:
        path.unlink()
        raise


def _parse(path: Path) -> rattler.LockFile:
    try:
        return rattler.LockFile.from_path(path)
    except Exception as exc:  # rattler raises its own exception types per failure
        raise InvalidArgument(f"lockfile is not a valid pixi.lock: {exc}") from exc


def check_lock(lock: rattler.LockFile, platform: str, policy: ChannelPolicy) -> None:
    """The lock covers ``platform`` in its default environment, and every package it holds
    is a conda archive from an allowed channel."""
    if platform not in {p.name for p in lock.platforms()}:
        raise InvalidArgument(f"the lock has no platform {platform} (this agent's platform)")
    if lock.environment(ENVIRONMENT) is None:
        raise InvalidArgument(f"the lock has no {ENVIRONMENT!r} environment")
    for name, environment in lock.environments():
        for locked_platform, packages in environment.packages_by_platform().items():
            for package in packages:
                where = f"locked package {package.name} ({name}, {locked_platform.name})"
                try:
                    validate_package_url(_archive_url(package), policy)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"{where}: {exc}") from exc


def _archive_url(package: rattler.LockedPackage) -> str:
    if not isinstance(package, rattler.CondaLockedBinaryPackage):
        raise InvalidArgument("not a conda package archive; darb installs only those")
    try:
        return package.repo_data_record().url
    except Exception as exc:  # e.g. a relative path, which rattler cannot convert
        raise InvalidArgument(f"its location {package.location!r} is not usable: {exc}") from exc
