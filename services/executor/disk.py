"""The agent's disk: what it uses, the package-cache sweep, and the free-space check.

Sizes are what ``du`` counts: bytes of disk blocks (``st_blocks * 512``) of every file,
directory and symlink, symlinks never followed, and each inode with more than one link
counted once per agent. The package cache is measured first, so a file an environment
hard-links from the cache counts for the cache; an environment's size is what its
directory adds beyond the cache (and beyond the environments measured before it).

The cache is rattler's (``$DARB_DATA_DIR/pkgs``): one extracted directory per package,
``<name>-<version>-<build>/``, beside ``<name>-<version>-<build>.lock`` and, when rattler
kept it, the archive (``.conda`` or ``.tar.bz2``). Environments hard-link the package's
files, so a package is in use while any of its files has a link count above 1. A package
the sweep finds in use has its directory's time set to now, so "older than the maximum
age" means: not written, and not seen in use, for that long.

The sweep must never remove a package an operation is about to link. Every engine run
holds the ``CacheGate`` shared; the sweep takes it exclusively, only when no operation
runs (it waits for a moment without one, rather than queueing behind a long install), and
operations that start while it runs wait for it (seconds at most). Within the gate the
sweep only renames what goes into ``$DARB_DATA_DIR/trash``; deleting it (which frees the
blocks, slow on a file system that trims each one) happens after, outside the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.executor.engines.base import Engine, Operation, ReportProgress
from services.executor.process import Emit
from services.executor.workspace import DataLayout, is_environment_id
from shared.config import DiskSettings
from shared.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

# Operations that add packages; a delete or a remove frees space and is never refused.
GROWING = frozenset({"create", "install", "apply"})
ARCHIVE_SUFFIXES = (".conda", ".tar.bz2")
# Walking a big cache costs CPU: after operations, it is measured again at most this often.
MEASURE_GAP_SECONDS = 5.0


def free_bytes(path: Path) -> tuple[int, int]:
    """(free for an unprivileged user, total) bytes of ``path``'s file system."""
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize, found.f_blocks * found.f_frsize


def _blocks(info: os.stat_result) -> int:
    return info.st_blocks * 512


class _Counter:
    """Adds up entries' blocks, each inode with several links once."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def entry(self, info: os.stat_result) -> int:
        if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in self.seen:
                return 0
            self.seen.add(key)
        return _blocks(info)

    def tree(self, root: Path) -> int:
        """``root`` and everything under it; entries that vanish meanwhile count 0."""
        try:
            total = self.entry(root.lstat())
        except FileNotFoundError:
            return 0
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                total += self.entry(info)
                if stat.S_ISDIR(info.st_mode):
                    stack.append(entry.path)
        return total


@dataclass
class Usage:
    package_cache_bytes: int = 0
    package_cache_packages: int = 0
    environments: dict[str, int] = field(default_factory=dict)
    free_bytes: int = 0
    total_bytes: int = 0

    @property
    def environments_bytes(self) -> int:
        return sum(self.environments.values())


def measure(layout: DataLayout) -> Usage:
    """The package cache, then every environment directory (see the module's text)."""
    counter = _Counter()
    usage = Usage()
    usage.package_cache_bytes = counter.tree(layout.package_cache)
    usage.package_cache_packages = sum(1 for _ in _packages(layout.package_cache))
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(layout.environments), key=lambda e: e.name):
            if is_environment_id(entry.name) and entry.is_dir(follow_symlinks=False):
                usage.environments[entry.name] = counter.tree(Path(entry.path))
    usage.free_bytes, usage.total_bytes = free_bytes(layout.data_dir)
    return usage


def cache_size(layout: DataLayout) -> int:
    return _Counter().tree(layout.package_cache)


def _packages(cache: Path) -> Iterator[os.DirEntry[str]]:
    """The extracted package directories of the cache (hidden entries are rattler's own)."""
    try:
        entries = list(os.scandir(cache))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            yield entry


def _scan(directory: str) -> int | None:
    """None when a file under ``directory`` has another link (an environment's), else the
    bytes of everything under it. ``info/`` (metadata, which installs do not link) is
    looked into last, so a package in use is told by its payload files."""
    total = 0
    stack = [directory]
    later: list[str] = []
    while stack or later:
        path = stack.pop() if stack else later.pop()
        try:
            entries = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = info.st_mode
                if stat.S_ISDIR(mode):
                    (later if path is directory and entry.name == "info" else stack).append(
                        entry.path
                    )
                elif info.st_nlink > 1 and stat.S_ISREG(mode):
                    return None
                total += info.st_blocks * 512
    return total


@dataclass
class SweepResult:
    packages_removed: int = 0
    bytes_freed: int = 0
    packages_in_use: int = 0
    packages_too_young: int = 0


def sweep_cache(cache: Path, trash: Path, max_age: float, now: float | None = None) -> SweepResult:
    """Move out of ``cache`` into ``trash`` the packages older than ``max_age`` seconds
    (by their directory's and their ``.lock`` file's time) that nothing links to, with
    their ``.lock`` and archive; stamp the directories of old packages in use with
    ``now``, so that their age counts from when they were last seen in use. The caller
    keeps operations out meanwhile, and deletes ``trash`` afterwards: renames are quick,
    freeing blocks may not be (a file system mounted with ``discard`` trims each)."""
    now = time.time() if now is None else now
    result = SweepResult()
    root, bin_ = str(cache), str(trash)
    made = False
    for entry in _packages(cache):
        lock = f"{root}/{entry.name}.lock"
        try:
            own = entry.stat(follow_symlinks=False)
            written = own.st_mtime
            with contextlib.suppress(FileNotFoundError):
                written = max(written, os.lstat(lock).st_mtime)
        except FileNotFoundError:
            continue
        if now - written < max_age:
            result.packages_too_young += 1
            continue
        size = _scan(entry.path)
        if size is None:
            result.packages_in_use += 1
            with contextlib.suppress(OSError):
                os.utime(entry.path, (now, now), follow_symlinks=False)
            continue
        if not made:
            os.makedirs(bin_, exist_ok=True)
            made = True
        os.rename(entry.path, f"{bin_}/{entry.name}")
        for suffix in (".lock", *ARCHIVE_SUFFIXES):
            with contextlib.suppress(FileNotFoundError):
                extra = f"{root}/{entry.name}{suffix}"
                size += os.lstat(extra).st_blocks * 512
                os.rename(extra, f"{bin_}/{entry.name}{suffix}")
        result.packages_removed += 1
        result.bytes_freed += size + own.st_blocks * 512
    return result


class CacheGate:
    """Shared by running engine operations, exclusive for a sweep. The sweep only starts
    when no operation runs, and new operations wait while it runs: it neither removes a
    package an operation links nor queues behind a long one."""

    def __init__(self) -> None:
        self._users = 0
        self._sweeping = False
        self._changed = asyncio.Condition()

    @property
    def busy(self) -> bool:
        return self._users > 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._sweeping)
            self._users += 1
        try:
            yield
        finally:
            async with self._changed:
                self._users -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self, wait: float | None) -> AsyncIterator[None]:
        """Once no operation runs (within ``wait`` seconds, or ``Unavailable``)."""
        async with self._changed:
            idle = lambda: not self._users and not self._sweeping  # noqa: E731
            try:
                await asyncio.wait_for(self._changed.wait_for(idle), wait)
            except TimeoutError:
                raise Unavailable(
                    f"operations kept running on the agent for {wait:g} s;"
                    " the package cache is swept only between them; try again"
                ) from None
            self._sweeping = True
        try:
            yield
        finally:
            async with self._changed:
                self._sweeping = False
                self._changed.notify_all()


class GatedEngine:
    """An engine whose every run holds the cache gate shared, and remeasures the cache
    after it."""

    def __init__(self, engine: Engine, keeper: DiskKeeper) -> None:
        self._engine = engine
        self._keeper = keeper
        self.name = engine.name

    async def run(
        self, operation: Operation, emit: Emit, progress: ReportProgress | None = None
    ) -> str | None:
        async with self._keeper.gate.shared():
            try:
                return await self._engine.run(operation, emit, progress)
            finally:
                self._keeper.cache_changed()

    def __getattr__(self, name: str) -> object:  # what else the servicer asks the engine
        return getattr(self._engine, name)


class DiskKeeper:
    """The agent's disk: the free-space check, usage, the sweep and its schedule, and the
    package cache's size as last measured (GetInfo reports it without walking the cache)."""

    def __init__(self, layout: DataLayout, settings: DiskSettings) -> None:
        self._layout = layout
        self._settings = settings
        self.gate = CacheGate()
        self.cache_bytes = -1
        self._measured = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sweep_lock = asyncio.Lock()
        self._deletions: set[asyncio.Task[None]] = set()

    def gated(self, engines: dict[str, Engine]) -> dict[str, Engine]:
        return {name: GatedEngine(engine, self) for name, engine in engines.items()}

    def admit(self, kind: str) -> None:
        """Refuse an operation that adds packages while free disk is below the minimum."""
        minimum = self._settings.min_free_bytes
        if not minimum or kind not in GROWING:
            return
        free, _ = free_bytes(self._layout.data_dir)
        if free < minimum:
            raise ResourceExhausted(
                f"the agent's disk has {free} bytes free, below the {minimum} bytes"
                " (DARB_MIN_FREE_BYTES) a create or install needs; free space on the agent"
                " (delete environments, sweep its package cache) or raise the limit"
            )

    def free(self) -> int:
        return free_bytes(self._layout.data_dir)[0]

    def cache_changed(self) -> None:
        self._measured.set()

    async def usage(self) -> Usage:
        return await asyncio.to_thread(measure, self._layout)

    async def sweep(self, wait: float | None) -> SweepResult:
        """One sweep now: waits up to ``wait`` seconds for no operation to run. What it
        removes is deleted in the background once operations may run again."""
        trash = self._layout.trash / f"pkgs-{uuid.uuid4().hex}"
        async with self._sweep_lock, self.gate.exclusive(wait):
            started = time.monotonic()
            cache, max_age = self._layout.package_cache, self._settings.pkg_cache_max_age
            result = await asyncio.to_thread(sweep_cache, cache, trash, max_age)
        if trash.exists():
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(shutil.rmtree, trash, True), name="darb-sweep-delete"
            )
            self._deletions.add(task)
            task.add_done_callback(self._deletions.discard)
        log.info(
            "package cache swept in %.3fs: %d packages removed (%d bytes), %d in use,"
            " %d younger than %gs",
            time.monotonic() - started,
            result.packages_removed,
            result.bytes_freed,
            result.packages_in_use,
            result.packages_too_young,
            max_age,
        )
        self.cache_changed()
        return result

    def start(self) -> None:
        self._measured.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="darb-disk")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        interval = self._settings.pkg_cache_sweep_interval
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + interval if interval else None
        measure_after = loop.time()
        while True:
            due = [] if next_sweep is None else [next_sweep]
            if self._measured.is_set():  # a measure is due, once the gap since the last is over
                await asyncio.sleep(max(min([*due, measure_after]) - loop.time(), 0))
            else:
                timeout = max(due[0] - loop.time(), 0) if due else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._measured.wait(), timeout)
            if self._measured.is_set() and loop.time() >= measure_after:
                self._measured.clear()
                try:
                    self.cache_bytes = await asyncio.to_thread(cache_size, self._layout)
                except Exception:
                    log.exception("measuring the package cache failed")
                measure_after = loop.time() + MEASURE_GAP_SECONDS
            if next_sweep is not None and loop.time() >= next_sweep:
                try:
                    await self.sweep(wait=interval)
                except Unavailable as exc:
                    log.warning("scheduled package-cache sweep skipped: %s", exc)
                except Exception:
                    log.exception("the package-cache sweep failed")
                next_sweep = loop.time() + interval
