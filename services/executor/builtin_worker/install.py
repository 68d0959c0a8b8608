"""Solving specs and installing records into a prefix with py-rattler, reported line by
line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import rattler
from rattler.exceptions import SolverError
from rattler.package.build_string import BuildString

from services.executor.builtin_worker.lockfile import Record, Solution
from services.executor.builtin_worker.manifest import Manifest
from services.executor.builtin_worker.output import log
from services.executor.builtin_worker.progress import PROGRESS, Phase
from services.executor.builtin_worker.request import Request, WorkerError


@functools.cache
def http_client() -> rattler.Client:
    """One client for the whole operation, built by a spare before its request arrives.

    Building one reads and parses the system's CA bundle (its cost: docs/benchmarks.md),
    and ``solve`` and ``install`` would each build their own when given none.
    """
    return rattler.Client.default_client()


def prepare() -> None:
    """Work a spare worker does while it waits for its request, off the operation's clock.

    A failure here is left for the operation to meet again and report as its error.
    """
    with contextlib.suppress(Exception):  # functools.cache keeps no exception: tried again
        http_client()
        rattler.VirtualPackage.detect()  # the first call of a process is the costly one


def link_config(directory: Path) -> rattler.Config | None:
    """Tell rattler that symlinks work where the prefix lives, found out once.

    Left to itself, rattler tries a symlink in the prefix before linking each package, on
    its blocking pool: a good part of a warm install of many small packages (see
    docs/benchmarks.md). One try in the same directory tree answers the same question; if
    it fails, rattler goes on asking per package.
    """
    probe = directory / f".darb-symlink-probe-{secrets.token_hex(4)}"
    try:
        probe.symlink_to("./")
    except OSError:
        return None
    probe.unlink()
    return rattler.Config.from_toml("allow-symbolic-links = true")


def label(record: Record) -> str:
    return f"{record.name.normalized} {record.version} {record.build}"


def change_lines(old: list[Record], new: list[Record]) -> list[str]:
    """One line per package that the transaction installs, changes or removes."""
    before = {r.name.normalized: r for r in old}
    after = {r.name.normalized: r for r in new}
    lines = [f"  remove    {label(r)}" for n, r in sorted(before.items()) if n not in after]
    for name, record in sorted(after.items()):
        prior = before.get(name)
        if prior is None:
            lines.append(f"  install   {label(record)}")
        elif label(prior) != label(record):
            lines.append(
                f"  {verb(prior, record)} {label(prior)} -> {record.version} {record.build}"
            )
    return lines


def verb(old: Record, new: Record) -> str:
    """How a package changes between two records of it, padded to line up in the log."""
    before, after = rattler.Version(str(old.version)), rattler.Version(str(new.version))
    return "upgrade  " if before < after else "downgrade" if after < before else "rebuild  "


def log_changes(old: list[Record], new: list[Record]) -> None:
    lines = change_lines(old, new)
    log(f"solution: {len(new)} packages, {len(lines)} to change")
    for line in lines:
        log(line)


# pixi's defaults for a manifest without ``[system-requirements]``, as (name, version):
# what another platform's solve assumes of the machines the lock is for.
VirtualSet = tuple[tuple[str, str], ...]
LINUX_VIRTUAL: VirtualSet = (("__unix", "0"), ("__linux", "4.18"), ("__glibc", "2.28"))
OSX_VIRTUAL: VirtualSet = (("__unix", "0"), ("__osx", "13.0"))
WINDOWS_VIRTUAL: VirtualSet = (("__win", "0"),)
UNIX_VIRTUAL: VirtualSet = (("__unix", "0"),)


def virtual_packages(
    platform: str, host: str
) -> list[rattler.VirtualPackage] | list[rattler.GenericVirtualPackage]:
    """Detected on the host; for another platform, its family's fixed set above."""
    if platform == host:
        return rattler.VirtualPackage.detect()
    return [
        rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(version), BuildString("0")
        )
        for name, version in foreign_virtual_set(rattler.Subdir(platform))
    ]


def foreign_virtual_set(subdir: rattler.Subdir) -> VirtualSet:
    if subdir.is_linux:
        return LINUX_VIRTUAL
    if subdir.is_osx:
        return OSX_VIRTUAL
    if subdir.is_windows:
        return WINDOWS_VIRTUAL
    return UNIX_VIRTUAL if subdir.is_unix else ()


async def solve(
    request: Request,
    gateway: rattler.Gateway,
    platform: str,
    channels: Iterable[str],
    specs: list[str],
    locked: list[Record],
) -> list[Record]:
    """Solve ``specs`` for ``platform``, preferring the ``locked`` records so unrelated
    packages stay put; a failure names the platform."""
    started = time.monotonic()
    try:
        records = await rattler.solve(
            sources=list(channels),
            specs=specs,
            gateway=gateway,
            platforms=[rattler.Subdir(platform), rattler.Subdir("noarch")],
            locked_packages=locked,
            virtual_packages=virtual_packages(platform, request.platform),
        )
    except SolverError as exc:
        raise WorkerError(f"cannot solve for {platform}: {str(exc).strip()}") from exc
    log(f"solved for {platform} in {time.monotonic() - started:.2f}s")
    return records


async def solve_all(request: Request, manifest: Manifest, locked: Solution) -> Solution:
    """Solve the manifest's specs for each of its platforms, all at once."""
    specs = manifest.specs()
    PROGRESS.report(Phase.SOLVING)
    log(f"solving {', '.join(specs) or '(no dependencies)'} for {', '.join(manifest.platforms)}")
    gateway = rattler.Gateway(cache_dir=request.repodata_cache_dir, client=http_client())
    solutions = await asyncio.gather(
        *(
            solve(request, gateway, p, manifest.channels, specs, locked.get(p, []))
            for p in manifest.platforms
        )
    )
    return dict(zip(manifest.platforms, solutions, strict=True))


def cached(cache_dir: Path, record: Record) -> bool:
    """Whether rattler's package cache already holds ``record`` extracted, so that an
    install links it without fetching. rattler keeps each package in
    ``<name>-<version>-<build>/`` beside a ``.lock`` file holding a revision (8 bytes) and
    the archive's sha256 (32 bytes), as py-rattler 0.28 writes them. Anything else counts
    as not cached: a wrong guess can only log a fetch that did not happen."""
    if record.sha256 is None:
        return False
    lock = cache_dir / f"{record.name.normalized}-{record.version}-{record.build}.lock"
    try:
        stamp = lock.read_bytes()
    except OSError:
        return False
    return len(stamp) == 40 and stamp[8:] == record.sha256


class Reporter:
    """Turns rattler's install callbacks into log lines naming the package and version,
    and into progress reports (``progress.PROGRESS``).

    It implements only the callbacks it needs: rattler's ``InstallerReporter`` protocol
    allows that, though to a type checker the class does not satisfy it (hence the cast).

    rattler reports the same callbacks for a package it fetches as for one already in
    its cache (and none for downloads from a ``file://`` channel), so the cache is looked
    at first: the log then tells a fetch from a use of the cache. Bytes count the
    archives of packages that are neither installed already nor cached: as rattler
    reports them for a download, and whole once a package's cache entry is complete (the
    only report for a ``file://`` channel). The phase is DOWNLOADING until every one of
    those bytes is in, then LINKING; packages count the transaction's operations."""

    def __init__(self, old: list[Record], new: list[Record], cache_dir: Path) -> None:
        self.old = {r.name.normalized: label(r) for r in old}
        self.new = {r.name.normalized: label(r) for r in new}
        self.cached = {r.name.normalized for r in new if cached(cache_dir, r)}
        self.cache_names: dict[int, str] = {}
        self.tokens = itertools.count(1)  # next() on a count is atomic; callbacks race
        self.logged_percent: dict[int, int] = {}
        # Progress: the archive sizes of the packages to fetch, and the bytes of each so far.
        self.sizes = {
            r.name.normalized: r.size or 0
            for r in new
            if r.name.normalized not in self.cached and self.old.get(r.name.normalized) != label(r)
        }
        self.bytes_total = sum(self.sizes.values())
        self.fetched: dict[str, int] = {}
        self.token_names: dict[int, str] = {}
        self.operations_total = 0
        self.operations_done = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        self._report()

    def _report(self) -> None:
        with self.lock:  # held while reporting, so counts from racing threads never go back
            done = min(sum(self.fetched.values()), self.bytes_total)
            phase = Phase.DOWNLOADING if done < self.bytes_total else Phase.LINKING
            packages = (self.operations_done, self.operations_total)
            PROGRESS.report(phase, packages, (done, self.bytes_total))

    def _token(self, name: str, package_name: str) -> int:
        token = next(self.tokens)
        self.cache_names[token] = name
        self.token_names[token] = package_name
        return token

    def on_transaction_start(self, total_operations: int) -> None:
        with self.lock:
            self.operations_total = total_operations
        self._report()

    def on_transaction_operation_complete(self, operation: int) -> None:
        with self.lock:
            self.operations_done += 1
        self._report()

    def on_populate_cache_start(self, operation: int, package_name: str) -> int:
        doing = "using cached" if package_name in self.cached else "fetching"
        log(f"{doing} {self.new.get(package_name, package_name)}")
        return self._token(self.new.get(package_name, package_name), package_name)

    def on_populate_cache_complete(self, cache_entry: int) -> None:
        name = self.token_names.get(cache_entry, "")
        if name in self.sizes:
            with self.lock:
                self.fetched[name] = self.sizes[name]
            self._report()

    def on_download_start(self, cache_entry: int) -> int:
        log(f"downloading {self.cache_names.get(cache_entry, '?')}")
        return cache_entry

    def on_download_progress(self, download_idx: int, progress: int, total: int | None) -> None:
        percent = progress * 100 // total if total else 0
        if percent // 10 > self.logged_percent.get(download_idx, 0) // 10:
            self.logged_percent[download_idx] = percent
            log(f"downloading {self.cache_names.get(download_idx, '?')}: {percent}%")
        name = self.token_names.get(download_idx, "")
        if name in self.sizes:
            with self.lock:
                self.fetched[name] = min(progress, self.sizes[name] or total or 0)
            self._report()

    def on_unlink_start(self, operation: int, package_name: str) -> int:
        log(f"unlinking {self.old.get(package_name, package_name)}")
        return operation

    def on_link_start(self, operation: int, package_name: str) -> int:
        log(f"linking {self.new.get(package_name, package_name)}")
        return operation


async def install(request: Request, old: list[Record], new: list[Record]) -> None:
    """Make the prefix hold exactly ``new``; rattler works out the difference itself."""
    prefix = request.workspace.prefix
    reporter = Reporter(old, new, request.cache_dir)
    reporter.start()
    await rattler.install(
        new,
        target_prefix=prefix,
        cache_dir=request.cache_dir,
        show_progress=False,
        client=http_client(),
        config=link_config(request.workspace.root),
        reporter=cast(rattler.InstallerReporter, reporter),
    )
    PROGRESS.flush()  # the last counts now, not when the next phase begins
    log(f"prefix {prefix} holds {len(new)} packages")
