"""Validation of package specs, package names and channels from user input.

The control plane and the agent both call these functions, so a request is judged by
the same rules wherever it arrives. Parsing alone is not validation: rattler's parser
accepts ``--help`` as a package name and reads ``"a\\nb"`` as ``a ==b``, so the raw text
is checked before it is parsed, and channels named inside a spec are held to the same
allowlist as the request's channels.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from rattler import Channel, MatchSpec

from shared.config import ChannelPolicy
from shared.errors import InvalidArgument

MAX_SPEC_LENGTH = 256
MAX_CHANNEL_LENGTH = 512
MAX_PACKAGE_URL_LENGTH = 1024
PACKAGE_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.\-]{0,127}$")
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}(/[A-Za-z0-9_.\-]{1,128}){0,3}$")
URL_SCHEMES = ("https", "http", "file")
_URL_IN_SPEC = re.compile(r'url="([^"]*)"')


@dataclass(frozen=True)
class ParsedSpec:
    """A validated spec: the text as given and the package name it selects."""

    text: str
    name: str
    version: str | None
    build: str | None
    channel: str | None


def _check_text(kind: str, value: str, max_length: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{kind} must not be empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{kind} {value[:40]!r}... is longer than {max_length} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise InvalidArgument(f"{kind} {value!r} contains control characters or line breaks")
    if value.lstrip().startswith("-"):
        raise InvalidArgument(f"{kind} {value!r} must not start with '-'")


def _channel_base_url(channel: str) -> str:
    """The canonical base URL of a channel name or URL, ending in '/'."""
    if "://" in channel:
        try:
            parts = urlsplit(channel)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise InvalidArgument(f"channel {channel!r} is not a valid URL: {exc}") from exc
        if parts.scheme not in URL_SCHEMES:
            raise InvalidArgument(f"channel {channel!r}: scheme must be one of {URL_SCHEMES}")
        # rattler decodes %2e%2e to '..', so the check must see the decoded path too.
        path = unquote(parts.path)
        if ".." in path.split("/") or parts.query or parts.fragment:
            raise InvalidArgument(f"channel {channel!r} must be a plain URL without '..'")
        path = posixpath.normpath(path or "/")
        return f"{parts.scheme}://{parts.netloc}{path.rstrip('/')}/"
    if not CHANNEL_NAME.fullmatch(channel) or ".." in channel:
        raise InvalidArgument(f"channel {channel!r} is not a valid channel name or URL")
    return str(Channel(channel).base_url)


def _is_allowed(base_url: str, policy: ChannelPolicy) -> bool:
    if "*" in policy.allowed_channels:
        return True
    for allowed in policy.allowed_channels:
        prefix = _channel_base_url(allowed)
        if base_url == prefix or base_url.startswith(prefix):
            return True
    return False


def validate_channel(channel: str, policy: ChannelPolicy) -> str:
    """Return the channel unchanged if it is well formed and allowed."""
    _check_text("channel", channel, MAX_CHANNEL_LENGTH)
    if not _is_allowed(_channel_base_url(channel.strip()), policy):
        raise InvalidArgument(f"channel {channel!r} is not allowed (see DARB_ALLOWED_CHANNELS)")
    return channel.strip()


def validate_package_url(url: str, policy: ChannelPolicy) -> str:
    """A package archive's URL (``<channel>/<subdir>/<file>``), if its channel is allowed."""
    _check_text("package URL", url, MAX_PACKAGE_URL_LENGTH)
    channel = url.rsplit("/", 2)[0]
    try:
        allowed = "://" in channel and _is_allowed(_channel_base_url(channel), policy)
    except InvalidArgument as exc:
        raise InvalidArgument(f"package URL {url!r} is not valid: {exc}") from exc
    if not allowed:
        raise InvalidArgument(f"package URL {url!r} is not in an allowed channel")
    return url


def resolve_channels(channels: list[str], policy: ChannelPolicy) -> list[str]:
    """The request's channels, validated, or the default channels when it names none."""
    chosen = list(channels) or list(policy.default_channels)
    validated = [validate_channel(channel, policy) for channel in chosen]
    if len(set(validated)) != len(validated):
        raise InvalidArgument("channels must not repeat")
    return validated


def parse_spec(spec: str, policy: ChannelPolicy) -> ParsedSpec:
    """Validate one conda match spec, including any channel or URL it names."""
    _check_text("package spec", spec, MAX_SPEC_LENGTH)
    try:
        match = MatchSpec(spec.strip(), strict=True)
    except Exception as exc:  # rattler raises its own exception types per failure
        raise InvalidArgument(f"package spec {spec!r} is not a valid match spec: {exc}") from exc
    if match.name is None or not PACKAGE_NAME.fullmatch(match.name.normalized):
        raise InvalidArgument(f"package spec {spec!r} does not name a valid package")
    channel = None
    if match.channel is not None:
        channel = str(match.channel.base_url)
        if not _is_allowed(_channel_base_url(channel), policy):
            raise InvalidArgument(f"package spec {spec!r} names a channel that is not allowed")
    for url in _URL_IN_SPEC.findall(str(match)):
        if not _is_allowed(_channel_base_url(url.rsplit("/", 2)[0]), policy):
            raise InvalidArgument(f"package spec {spec!r} points to a URL that is not allowed")
    return ParsedSpec(
        text=spec.strip(),
        name=match.name.normalized,
        version=str(match.version) if match.version is not None else None,
        build=str(match.build) if match.build is not None else None,
        channel=channel,
    )


def parse_specs(specs: list[str], policy: ChannelPolicy) -> list[ParsedSpec]:
    """Validate a non-empty list of specs naming each package at most once."""
    if not specs:
        raise InvalidArgument("at least one package spec is required")
    parsed = [parse_spec(spec, policy) for spec in specs]
    names = [spec.name for spec in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(f"package(s) named more than once: {', '.join(duplicates)}")
    return parsed


def validate_package_name(name: str) -> str:
    """A bare package name, as RemovePackages takes them."""
    _check_text("package name", name, 128)
    normalized = name.strip().lower()
    if not PACKAGE_NAME.fullmatch(normalized):
        raise InvalidArgument(f"package name {name!r} is not a valid conda package name")
    return normalized
