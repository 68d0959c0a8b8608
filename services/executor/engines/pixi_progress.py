"""Progress of one ``pixi`` command, read from what pixi writes, not from its terminal bars.

``pixi add``/``remove`` solve, write ``pixi.lock``, then install the lock's packages for
this host into the prefix (``.pixi/envs/default``), where each linked package gets its
``conda-meta/<name>-<version>-<build>.json`` record. So:

- totals come from the lock once the command has (re)written it (``pixi install
  --frozen`` installs the lock darb wrote before it, known from the start): the default
  environment's conda packages for the host's platform, and the sum of their ``size``
  fields (the archives' sizes, where the lock has one);
- done counts are the lock's packages whose record is in ``conda-meta``, and their sizes:
  bytes of installed packages, not of downloads;
- the phase is SOLVING until the lock is known, then DOWNLOADING until a package that was
  not in the prefix before the command is linked (or every one is there), then LINKING.

A poll is a ``stat`` of the lock and a ``listdir`` of ``conda-meta``; the lock is parsed
again only when its inode, mtime or size changed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

from rattler import LockFile
from rattler.exceptions import ParseCondaLockError

from services.executor.builtin_worker.progress import INTERVAL, Phase, Report
from services.executor.engines.base import ReportProgress
from services.executor.workspace import Workspace

FileKey = tuple[int, int, int]


def locked_sizes(path: Path, platform: str) -> dict[str, int] | None:
    """``conda-meta`` record name -> archive size (0 where the lock has none) of the
    default environment's conda packages for ``platform``; None for a lock that does not
    parse (rattler reads every lock format version pixi writes)."""
    try:
        lock = LockFile.from_path(path)
    except ParseCondaLockError:
        return None
    environment = lock.default_environment()
    if environment is None:
        return {}
    return {
        f"{record.name.normalized}-{record.version}-{record.build}.json": record.size or 0
        for locked in environment.platforms()
        if locked.name == platform
        for record in environment.conda_repodata_records_for_platform(locked) or []
    }


def _file_key(path: Path) -> FileKey | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def _records(conda_meta: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(conda_meta))
    except OSError:
        return frozenset()


class PrefixProgress:
    """Where one pixi command stands, from the workspace's lock and prefix. Build it
    before the command starts: it notes the lock and the records that are already there.
    ``poll`` may run in worker threads, one at a time (hence the mutex)."""

    def __init__(self, workspace: Workspace, platform: str, lock_given: bool) -> None:
        self._lockfile = workspace.lockfile
        self._conda_meta = workspace.prefix / "conda-meta"
        self._platform = platform
        self._lock_given = lock_given  # install --frozen: the lock there is the one to install
        self._started_key = _file_key(self._lockfile)
        self._before = _records(self._conda_meta)
        self._parsed_key: FileKey | None = None
        self._sizes: dict[str, int] | None = None
        self._linked = False
        self._mutex = threading.Lock()

    def poll(self, settled: bool = False) -> Report:
        """The report for now; ``settled``: the command succeeded, so the lock there is
        its outcome even if the command left it as it was."""
        with self._mutex:
            key = _file_key(self._lockfile)
            fresh = self._lock_given or settled or key != self._started_key
            if key is not None and fresh and key != self._parsed_key:
                self._parsed_key = key
                sizes = locked_sizes(self._lockfile, self._platform)
                self._sizes = self._sizes if sizes is None else sizes
            return self._report(_records(self._conda_meta))

    def _report(self, present: frozenset[str]) -> Report:
        if self._sizes is None:
            phase = Phase.LINKING if self._lock_given else Phase.SOLVING
            return Report(int(phase), time_ns=time.time_ns())
        done = [size for name, size in self._sizes.items() if name in present]
        self._linked = self._linked or any(
            name in present and name not in self._before for name in self._sizes
        )
        complete = len(done) == len(self._sizes)
        phase = Phase.LINKING if self._linked or complete else Phase.DOWNLOADING
        packages = (len(done), len(self._sizes))
        nbytes = (sum(done), sum(self._sizes.values()))
        return Report(int(phase), *packages, *nbytes, time.time_ns())


async def follow_with_progress(
    follow: Awaitable[int], prefix: PrefixProgress, progress: ReportProgress
) -> int:
    """Await the command (``follow``: its exit code) while polling ``prefix`` every
    ``INTERVAL``; a report goes out when it differs from the last, and once more when the
    command has ended. The poller ends with the command, however that ends."""
    poller = asyncio.ensure_future(_poll(prefix, progress))
    try:
        exit_code = await follow
    finally:
        poller.cancel()
        await asyncio.wait({poller})
    progress(await asyncio.to_thread(prefix.poll, exit_code == 0))
    return exit_code


async def _poll(prefix: PrefixProgress, progress: ReportProgress) -> None:
    sent: Report | None = None
    while True:
        report = await asyncio.to_thread(prefix.poll)
        if sent is None or replace(report, time_ns=0) != replace(sent, time_ns=0):
            progress(report)
            sent = report
        await asyncio.sleep(INTERVAL)
