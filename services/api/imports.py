"""An environment created from files a team already has: a pixi.toml (with or without
its pixi.lock) or a conda environment.yml. Everything is checked before anything is
queued: the texts parse, darb can honour all of them, every channel (also the full URLs
inside a lock) passes the allowlist, and a lock has this host's platform and satisfies
the manifest's dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rattler
import yaml

from shared.config import ApiSettings
from shared.errors import InvalidArgument, refusing
from shared.lockhash import ENVIRONMENT, read_lock_text
from shared.manifests import parse_manifest
from shared.platforms import validate_platforms
from shared.specs import parse_specs, resolve_channels, validate_channel

YML_KEYS = ("name", "channels", "dependencies")


@dataclass(frozen=True)
class Imported:
    channels: list[str]
    packages: list[str]
    platforms: list[str]
    lockfile: str
    source: str


def host_platform() -> str:
    """The conda platform of this host, taken for the agents' (they share it in every
    supported deployment; an agent on another platform refuses the lock itself)."""
    return str(rattler.Subdir.current())


def from_request(request: Any, settings: ApiSettings) -> Imported | None:
    """The import a CreateEnvironmentRequest asks for, checked; None for a plain create.
    A refusal names the request field it concerns: the file whose text it refuses (a
    lock's own problems are the lockfile's, a missing manifest the manifest's)."""
    if not (request.manifest or request.environment_yml or request.lockfile):
        return None
    if request.manifest and request.environment_yml:
        raise InvalidArgument("give manifest or environment_yml, not both", "manifest")
    if request.lockfile and not request.manifest:
        raise InvalidArgument("a lockfile needs its manifest (pixi.toml)", "manifest")
    if request.packages or request.channels:
        raise InvalidArgument(
            "an imported environment takes its packages and channels from the file",
            "packages" if request.packages else "channels",
        )
    for field in ("manifest", "lockfile", "environment_yml"):
        if len(getattr(request, field).encode()) > settings.limits.max_message_bytes:
            raise InvalidArgument(f"{field} is larger than DARB_MAX_MESSAGE_BYTES", field)
    with refusing("platforms"):
        extra = list(validate_platforms(list(request.platforms)))
    if request.environment_yml:
        with refusing("environment_yml"):
            return _from_environment_yml(request.environment_yml, extra, settings)
    return _from_manifest(request.manifest, request.lockfile, extra, settings)


def _from_manifest(text: str, lockfile: str, extra: list[str], settings: ApiSettings) -> Imported:
    with refusing("manifest"):  # ``extra`` is checked already
        fields = parse_manifest(text)
        policy = settings.channels
        channels = resolve_channels(fields.channels, policy)
        specs = [spec.text for spec in parse_specs(list(fields.specs.values()), policy)]
        platforms = list(validate_platforms(list(dict.fromkeys([*fields.platforms, *extra]))))
    if not lockfile:
        return Imported(channels, specs, platforms, "", "pixi.toml")
    with refusing("lockfile"):
        locked = _check_lock(lockfile, specs, settings)
    return Imported(channels, specs, locked, lockfile, "pixi.lock")


def _check_lock(text: str, specs: list[str], settings: ApiSettings) -> list[str]:
    """The lock's platforms, once it parses, has this host's platform, names only
    allowed channels and satisfies every spec; ``InvalidArgument`` otherwise."""
    try:
        lock = read_lock_text(text)
    except Exception as exc:
        raise InvalidArgument(f"pixi.lock cannot be read: {str(exc)[:200]}") from None
    environment = lock.environment(ENVIRONMENT)
    if environment is None:
        raise InvalidArgument(f"pixi.lock has no {ENVIRONMENT!r} environment")
    platforms = {platform.name: platform for platform in environment.platforms()}
    host = host_platform()
    if host not in platforms:
        raise InvalidArgument(f"pixi.lock has no packages for this host's platform {host}")
    for channel in environment.channels():
        validate_channel(str(channel), settings.channels)
    records = []
    for platform in platforms.values():
        for record in environment.conda_repodata_records_for_platform(platform) or []:
            validate_channel(str(record.channel or record.url), settings.channels)
            if platform.name == host:
                records.append(record)
    for spec in specs:
        match = rattler.MatchSpec(spec)
        if not any(match.matches(record) for record in records):
            raise InvalidArgument(f"pixi.lock does not satisfy the manifest's {spec!r}")
    return list(platforms)


def _from_environment_yml(text: str, extra: list[str], settings: ApiSettings) -> Imported:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"environment.yml is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("environment.yml must be a mapping")
    if unknown := sorted(set(data) - set(YML_KEYS)):
        raise InvalidArgument(f"environment.yml: darb cannot honour {unknown[0]!r}")
    channels, dependencies = data.get("channels") or [], data.get("dependencies") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise InvalidArgument("environment.yml: channels must be a list of names")
    if not isinstance(dependencies, list):
        raise InvalidArgument("environment.yml: dependencies must be a list")
    for entry in dependencies:
        if isinstance(entry, dict):
            section = next(iter(entry), "?")
            raise InvalidArgument(
                f"environment.yml: the {section}: section of dependencies is not supported"
                " (darb installs conda packages only)"
            )
        if not isinstance(entry, str):
            raise InvalidArgument(f"environment.yml: dependency {entry!r} is not a string")
    policy = settings.channels
    resolved = resolve_channels(channels, policy)
    specs = [spec.text for spec in parse_specs([str(d) for d in dependencies], policy)]
    if not specs:
        raise InvalidArgument("environment.yml lists no dependencies")
    return Imported(resolved, specs, extra, "", "environment.yml")
