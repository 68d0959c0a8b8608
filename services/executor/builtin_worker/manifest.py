"""pixi.toml: the ``[dependencies]`` entries darb writes for match specs, and back."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import rattler
import tomli_w

from services.executor.builtin_worker.request import WorkerError
from shared.manifests import Dependency, dependency_spec

MANIFEST_FIELDS = ("version", "build", "channel")
# The keys of a canonical match spec, e.g. ``version`` and ``md5`` in ``a[version="1",md5="…"]``.
SPEC_FIELD = re.compile(r'[\[,](\w+)="')


def dependency_entry(spec: str) -> tuple[str, Dependency]:
    """The ``[dependencies]`` key and value for a match spec.

    Refuses specs with fields that darb does not write to pixi.toml (a URL, a hash, ...)
    rather than dropping them: the manifest must mean what was asked for.
    """
    match = rattler.MatchSpec(spec)
    fields = SPEC_FIELD.findall(match.to_canonical_string())
    if unsupported := [key for key in fields if key not in MANIFEST_FIELDS]:
        names = ", ".join(unsupported)
        raise WorkerError(f"cannot record {spec!r} in pixi.toml: {names} not supported")
    table = {}
    if match.version:
        table["version"] = str(match.version)
    if match.build:
        table["build"] = str(match.build)
    if match.channel:
        table["channel"] = match.channel.base_url
    plain = set(table) <= {"version"}
    return match.name.normalized, table.get("version", "*") if plain else table


def manifest_text(
    name: str, channels: Iterable[str], platforms: Iterable[str], deps: dict[str, Dependency]
) -> str:
    workspace = {"name": name, "channels": list(channels), "platforms": list(platforms)}
    return tomli_w.dumps({"workspace": workspace, "dependencies": deps})


@dataclass(frozen=True)
class Manifest:
    """The parts of pixi.toml that darb writes and reads back; ``platforms`` are those
    solved and locked (the host's is the one installed)."""

    name: str
    channels: tuple[str, ...]
    platforms: tuple[str, ...]
    dependencies: dict[str, Dependency]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = tomllib.loads(path.read_text())
        workspace = data["workspace"]
        platforms = tuple(workspace["platforms"])
        deps = data.get("dependencies", {})
        return cls(workspace["name"], tuple(workspace["channels"]), platforms, deps)

    @classmethod
    def of(
        cls, name: str, channels: Iterable[str], platforms: Iterable[str], specs: Iterable[str]
    ) -> Manifest:
        """The manifest darb writes for these fields; refuses specs it cannot record."""
        deps = dict(dependency_entry(spec) for spec in specs)
        return cls(name, tuple(channels), tuple(platforms), deps)

    def specs(self) -> list[str]:
        return [dependency_spec(name, entry) for name, entry in self.dependencies.items()]

    def text(self) -> str:
        return manifest_text(self.name, self.channels, self.platforms, self.dependencies)
