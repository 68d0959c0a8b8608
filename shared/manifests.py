"""pixi.toml as darb reads it: the workspace's name, channels and platforms, and the
``[dependencies]`` table as conda match specs. The agent writes manifests (its builtin
worker), the control plane reads them back (rollback, diff, import)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidArgument

# A [dependencies] value: a version spec, or a table of version, build and channel.
Dependency = str | dict[str, str]
DEPENDENCY_FIELDS = ("version", "build", "channel")
# Top-level tables darb honours; any other makes an imported manifest INVALID_ARGUMENT.
TABLES = ("workspace", "project", "dependencies")
# Keys of [workspace] darb honours (the rest describe the project and are ignored).
IGNORED_WORKSPACE_KEYS = ("version", "description", "authors", "license", "readme")


@dataclass(frozen=True)
class ManifestFields:
    name: str
    channels: list[str]
    platforms: list[str]
    # Package name -> the match spec its [dependencies] entry stands for.
    specs: dict[str, str]


def dependency_spec(name: str, entry: Dependency) -> str:
    """The match spec that a ``[dependencies]`` entry stands for."""
    if isinstance(entry, str):
        return name if entry.strip() in ("", "*") else f"{name} {entry.strip()}"
    spec = f"{name} {entry.get('version', '*')} {entry.get('build', '')}".strip()
    return f"{entry['channel']}::{spec}" if "channel" in entry else spec


def parse_manifest(text: str) -> ManifestFields:
    """The fields of a pixi.toml; ``InvalidArgument`` saying why for a text that is not
    TOML, or holds something darb would have to drop (features, tasks, PyPI packages...)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"pixi.toml is not valid TOML: {exc}") from None
    if unknown := sorted(set(data) - set(TABLES)):
        raise InvalidArgument(f"pixi.toml: darb cannot honour [{'], ['.join(unknown)}]")
    workspace = _table(data, "workspace") or _table(data, "project")
    known = {"name", "channels", "platforms", *IGNORED_WORKSPACE_KEYS}
    if unknown := sorted(set(workspace) - known):
        raise InvalidArgument(f"pixi.toml: darb cannot honour workspace.{unknown[0]}")
    deps = _table(data, "dependencies")
    return ManifestFields(
        name=str(workspace.get("name", "")),
        channels=_strings(workspace, "channels"),
        platforms=_strings(workspace, "platforms"),
        specs={name: _spec(name, entry) for name, entry in deps.items()},
    )


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"pixi.toml: {key} must be a table")
    return value


def _strings(table: dict[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument(f"pixi.toml: workspace.{key} must be a list of strings")
    return value


def _spec(name: str, entry: Any) -> str:
    if isinstance(entry, dict):
        if unknown := sorted(set(entry) - set(DEPENDENCY_FIELDS)):
            raise InvalidArgument(f"pixi.toml: dependency {name!r}: cannot honour {unknown[0]}")
        if not all(isinstance(value, str) for value in entry.values()):
            raise InvalidArgument(f"pixi.toml: dependency {name!r} must hold strings")
        return dependency_spec(name, entry)
    if not isinstance(entry, str):
        raise InvalidArgument(f"pixi.toml: dependency {name!r} must be a string or a table")
    return dependency_spec(name, entry)
