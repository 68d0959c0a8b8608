"""What differs between two versions of an environment: the installed packages (for one
platform) and the dependencies the manifests ask for. Pure functions of the versions."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.api.imports import host_platform
from services.api.records import PackageRow
from services.api.repo.models import EnvironmentVersion
from shared.errors import InvalidArgument
from shared.lockhash import ENVIRONMENT, read_lock_text


@dataclass(frozen=True)
class PackageChange:
    name: str
    from_version: str
    to_version: str
    from_build: str
    to_build: str


@dataclass
class VersionDiff:
    added: list[PackageRow] = field(default_factory=list)
    removed: list[PackageRow] = field(default_factory=list)
    changed: list[PackageChange] = field(default_factory=list)
    # (name, spec) and (name, from spec, to spec) of the manifests' dependencies.
    requested_added: list[tuple[str, str]] = field(default_factory=list)
    requested_removed: list[tuple[str, str]] = field(default_factory=list)
    requested_changed: list[tuple[str, str, str]] = field(default_factory=list)


def packages(version: EnvironmentVersion, platform: str) -> list[PackageRow]:
    """The version's packages for ``platform`` (empty: the host's, stored with it; any
    other is read from its lock)."""
    if not platform or platform == host_platform():
        return [PackageRow(*row) for row in version.packages]
    if platform not in version.platforms:
        raise InvalidArgument(
            f"version {version.version} is locked for {', '.join(version.platforms)},"
            f" not {platform}"
        )
    environment = read_lock_text(version.lockfile).environment(ENVIRONMENT)
    records = []
    for locked in environment.platforms() if environment is not None else []:
        if locked.name == platform and environment is not None:
            records = environment.conda_repodata_records_for_platform(locked) or []
    rows = [
        PackageRow(r.name.normalized, str(r.version), str(r.build), str(r.channel or ""))
        for r in records
    ]
    return sorted(rows, key=lambda row: row.name)


def diff(old: EnvironmentVersion, new: EnvironmentVersion, platform: str) -> VersionDiff:
    result = VersionDiff()
    before = {row.name: row for row in packages(old, platform)}
    after = {row.name: row for row in packages(new, platform)}
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            result.added.append(b)
        elif b is None and a is not None:
            result.removed.append(a)
        elif a is not None and b is not None and (a.version, a.build) != (b.version, b.build):
            result.changed.append(PackageChange(name, a.version, b.version, a.build, b.build))
    wanted_before, wanted_after = old.specs, new.specs
    for name in sorted(wanted_before.keys() | wanted_after.keys()):
        x, y = wanted_before.get(name), wanted_after.get(name)
        if x is None and y is not None:
            result.requested_added.append((name, y))
        elif y is None and x is not None:
            result.requested_removed.append((name, x))
        elif x is not None and y is not None and x != y:
            result.requested_changed.append((name, x, y))
    return result
