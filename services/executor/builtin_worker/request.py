"""The request the agent writes to the worker's stdin, and the failures a user can fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.executor.workspace import Workspace

OPERATIONS = ("create", "install", "remove", "restore", "delete", "apply")


class WorkerError(Exception):
    """An expected failure whose message is shown to the user as is."""


@dataclass(frozen=True)
class Request:
    """The JSON request read from stdin; paths are absolute and already validated.
    ``platforms`` are the manifest's for create and apply (``platform``, the host's, is
    always among them); ``lockfile`` is the lock an apply installs and writes."""

    op: str
    workspace: Workspace
    cache_dir: Path
    repodata_cache_dir: Path
    trash_dir: Path
    platform: str
    name: str = ""
    channels: tuple[str, ...] = ()
    specs: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    lockfile: Path | None = None
    # The agent's fencing token file for the environment and the operation's token,
    # checked at the commit point (``services/executor/fencing.py``); None: not fenced.
    fence_file: Path | None = None
    fence_token: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Request:
        try:
            request = cls(
                op=data["op"],
                workspace=Workspace(Path(data["workspace"])),
                cache_dir=Path(data["cache_dir"]),
                repodata_cache_dir=Path(data["repodata_cache_dir"]),
                trash_dir=Path(data["trash_dir"]),
                platform=data["platform"],
                name=data.get("name", ""),
                channels=tuple(data.get("channels", ())),
                specs=tuple(data.get("specs", ())),
                platforms=tuple(data.get("platforms", ())),
                lockfile=Path(data["lockfile"]) if data.get("lockfile") else None,
                fence_file=Path(data["fence_file"]) if data.get("fence_file") else None,
                fence_token=int(data.get("fence_token", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerError(f"invalid request: missing or malformed {exc}") from exc
        if request.op not in OPERATIONS:
            raise WorkerError(f"invalid request: unknown op {request.op!r}")
        return request

    def manifest_platforms(self) -> tuple[str, ...]:
        """The platforms a created or applied manifest lists: the host's first."""
        return (self.platform, *(p for p in self.platforms if p != self.platform))
