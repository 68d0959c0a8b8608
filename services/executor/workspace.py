"""Where an environment lives on disk, derived only from its id.

An environment is a pixi workspace: ``<data>/environments/<id>/`` holding ``pixi.toml``,
``pixi.lock`` and the prefix ``.pixi/envs/default``. darb keeps its own bookkeeping in
``.darb/`` beside them: ``dirty`` marks a prefix that an operation has started to change,
``txn/`` holds the next manifest and lock until ``txn/COMMIT`` says both are complete.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.executor.process import kill_group

ENVIRONMENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_environment_id(value: str) -> bool:
    """True for the canonical lower-case UUID text the control plane assigns."""
    return bool(ENVIRONMENT_ID.fullmatch(value))


@dataclass(frozen=True)
class Workspace:
    """The paths of one environment. Build it with ``Workspace.of``."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path, environment_id: str) -> Workspace:
        if not is_environment_id(environment_id):
            raise ValueError(f"not an environment id: {environment_id!r}")
        return cls(data_dir / "environments" / environment_id)

    @property
    def manifest(self) -> Path:
        return self.root / "pixi.toml"

    @property
    def lockfile(self) -> Path:
        return self.root / "pixi.lock"

    @property
    def prefix(self) -> Path:
        return self.root / ".pixi" / "envs" / "default"

    @property
    def state_dir(self) -> Path:
        return self.root / ".darb"

    @property
    def dirty_marker(self) -> Path:
        return self.state_dir / "dirty"

    @property
    def txn_dir(self) -> Path:
        return self.state_dir / "txn"

    @property
    def commit_marker(self) -> Path:
        return self.txn_dir / "COMMIT"

    def exists(self) -> bool:
        """A workspace exists once a create has committed its manifest."""
        return self.manifest.is_file()

    def needs_recovery(self) -> bool:
        """An operation stopped half-way: the prefix or the files must be put right."""
        return self.dirty_marker.exists() or self.txn_dir.exists()


@dataclass(frozen=True)
class DataLayout:
    """The agent's directories under ``$DARB_DATA_DIR``."""

    data_dir: Path

    @property
    def environments(self) -> Path:
        return self.data_dir / "environments"

    @property
    def package_cache(self) -> Path:
        """Shared by every environment, so a package already extracted is hard-linked."""
        return self.data_dir / "pkgs"

    @property
    def repodata_cache(self) -> Path:
        return self.data_dir / "repodata"

    @property
    def trash(self) -> Path:
        """Deleted workspaces are renamed here first, which makes a delete atomic."""
        return self.data_dir / "trash"

    @property
    def runs(self) -> Path:
        """Result files of running engine processes."""
        return self.data_dir / "run"

    def workspace(self, environment_id: str) -> Workspace:
        return Workspace.of(self.data_dir, environment_id)

    def group_file(self, pgid: int) -> Path:
        """Marks a running process group, so a restarted agent can kill what it left."""
        return self.runs / f"{pgid}.pgid"

    def prepare(self) -> None:
        """Create the directories and drop what a previous agent run left half-done."""
        for directory in (self.environments, self.package_cache, self.repodata_cache):
            directory.mkdir(parents=True, exist_ok=True)
        if self.runs.is_dir():
            for marker in self.runs.glob("*.pgid"):
                kill_group(int(marker.stem))
        for scratch in (self.trash, self.runs):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
