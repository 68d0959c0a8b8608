"""Conda platforms (subdirs) a request may name for an environment's manifest and lock."""

from __future__ import annotations

from collections.abc import Sequence

from shared.errors import InvalidArgument

# pixi's ``Platform`` values without ``noarch`` and ``unknown``: what pixi.toml accepts in
# ``[workspace] platforms``, each also a subdir rattler knows.
KNOWN_PLATFORMS = frozenset(
    {
        "emscripten-wasm32",
        "linux-32",
        "linux-64",
        "linux-aarch64",
        "linux-armv6l",
        "linux-armv7l",
        "linux-ppc64",
        "linux-ppc64le",
        "linux-riscv32",
        "linux-riscv64",
        "linux-s390x",
        "osx-64",
        "osx-arm64",
        "wasi-wasm32",
        "win-32",
        "win-64",
        "win-arm64",
        "zos-z",
    }
)
# Each platform is a solve of its own: this bounds the work one request asks for.
MAX_PLATFORMS = 8


def validate_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """``platforms`` if each is a known conda platform, none repeats and they are few."""
    if len(platforms) > MAX_PLATFORMS:
        raise InvalidArgument(
            f"{len(platforms)} platforms in one request; the limit is {MAX_PLATFORMS}"
        )
    for platform in platforms:
        if platform not in KNOWN_PLATFORMS:
            known = ", ".join(sorted(KNOWN_PLATFORMS))
            raise InvalidArgument(f"platform {platform[:40]!r} is not one of: {known}")
    if len(set(platforms)) != len(platforms):
        raise InvalidArgument("platforms must not repeat")
    return tuple(platforms)
