"""The builtin engine: one environment operation in a child process of the agent.

Run as ``python -m services.executor.builtin_worker --result RESULT_PATH`` with a JSON
request on stdin. It runs in a process of its own so that the agent can cancel it by
killing its process group, and so that a crash in the native rattler code cannot take the
agent down. Progress goes to stdout line by line as it happens (the agent streams it to
users); warnings and errors go to stderr. The outcome is written to RESULT_PATH as
``{"success": bool, "error": str}``; a missing result file means the worker was killed.

On-disk protocol (see ``workspace.py``): a create writes ``pixi.toml`` last, so a workspace
without it is an incomplete create. Install and remove mark the prefix ``.darb/dirty``
before touching it, stage the next manifest and lock in ``.darb/txn/`` and commit them by
creating ``.darb/txn/COMMIT``; ``restore`` rolls a committed transaction forward and
rebuilds a dirty prefix from ``pixi.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import rattler
import tomli_w
from rattler.exceptions import (
    CanonicalMatchSpecError,
    FetchRepoDataError,
    GatewayError,
    InstallerError,
    InvalidMatchSpecError,
    InvalidPackageNameError,
    LinkError,
    ParseCondaLockError,
    SolverError,
    TransactionError,
)

from services.executor.workspace import Workspace

ENVIRONMENT = "default"
OPERATIONS = ("create", "install", "remove", "restore", "delete")

# Failures a user can cause or fix: reported by their message alone, without a traceback.
EXPECTED_ERRORS: dict[type[BaseException], str] = {
    SolverError: "cannot solve the environment",
    GatewayError: "cannot read the channels",
    FetchRepoDataError: "cannot read the channels",
    InstallerError: "cannot install the packages",
    LinkError: "cannot install the packages",
    TransactionError: "cannot install the packages",
    InvalidMatchSpecError: "invalid package spec",
    CanonicalMatchSpecError: "invalid package spec",
    InvalidPackageNameError: "invalid package name",
    ParseCondaLockError: "cannot read pixi.lock",
    tomllib.TOMLDecodeError: "cannot read pixi.toml",
}

Record = rattler.RepoDataRecord
Dependency = str | dict[str, str]
MANIFEST_FIELDS = ("version", "build", "channel")
# The keys of a canonical match spec, e.g. ``version`` and ``md5`` in ``a[version="1",md5="…"]``.
SPEC_FIELD = re.compile(r'[\[,](\w+)="')


class WorkerError(Exception):
    """An expected failure whose message is shown to the user as is."""


# Output lines wait here at most FLUSH_INTERVAL before they go out in one write: a pipe
# write and a wake-up of the agent per line cost more than the line itself when a few
# hundred packages link in a fraction of a second, and 10 ms is still live for a reader.
FLUSH_INTERVAL = 0.01
# rattler calls the install reporter from several threads at once, hence the lock.
_OUTPUT_LOCK = threading.Lock()
_PENDING: dict[TextIO, list[str]] = {}


def _write_line(stream: TextIO, message: str) -> None:
    with _OUTPUT_LOCK:
        _PENDING.setdefault(stream, []).append(f"{message}\n")


def flush_output() -> None:
    """Write every pending line; called by the flusher thread and once at exit."""
    with _OUTPUT_LOCK:
        for stream, lines in _PENDING.items():
            if lines:
                stream.write("".join(lines))
                stream.flush()
                lines.clear()


def _flush_periodically() -> None:
    while True:
        time.sleep(FLUSH_INTERVAL)
        flush_output()


def log(message: str) -> None:
    """One progress line for the user, streamed within FLUSH_INTERVAL."""
    _write_line(sys.stdout, message)


def warn(message: str) -> None:
    _write_line(sys.stderr, message)


@dataclass(frozen=True)
class Request:
    """The JSON request read from stdin; paths are absolute and already validated."""

    op: str
    workspace: Workspace
    cache_dir: Path
    repodata_cache_dir: Path
    trash_dir: Path
    platform: str
    name: str = ""
    channels: tuple[str, ...] = ()
    specs: tuple[str, ...] = ()

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
            )
        except (KeyError, TypeError) as exc:
            raise WorkerError(f"invalid request: missing or malformed {exc}") from exc
        if request.op not in OPERATIONS:
            raise WorkerError(f"invalid request: unknown op {request.op!r}")
        return request


# --- pixi.toml -------------------------------------------------------------------------


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


def dependency_spec(name: str, entry: Dependency) -> str:
    """The match spec that a ``[dependencies]`` entry stands for."""
    if isinstance(entry, str):
        return name if entry == "*" else f"{name} {entry}"
    spec = f"{name} {entry.get('version', '*')} {entry.get('build', '')}".strip()
    return f"{entry['channel']}::{spec}" if "channel" in entry else spec


def manifest_text(
    name: str, channels: Iterable[str], platform: str, deps: dict[str, Dependency]
) -> str:
    workspace = {"name": name, "channels": list(channels), "platforms": [platform]}
    return tomli_w.dumps({"workspace": workspace, "dependencies": deps})


@dataclass(frozen=True)
class Manifest:
    """The parts of pixi.toml that darb writes and reads back."""

    name: str
    channels: tuple[str, ...]
    platform: str
    dependencies: dict[str, Dependency]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = tomllib.loads(path.read_text())
        workspace = data["workspace"]
        platform = workspace["platforms"][0]
        deps = data.get("dependencies", {})
        return cls(workspace["name"], tuple(workspace["channels"]), platform, deps)

    def specs(self) -> list[str]:
        return [dependency_spec(name, entry) for name, entry in self.dependencies.items()]

    def text(self) -> str:
        return manifest_text(self.name, self.channels, self.platform, self.dependencies)


# --- pixi.lock -------------------------------------------------------------------------


def build_lock(
    platform: rattler.LockPlatform, channels: Iterable[str], records: list[Record]
) -> rattler.LockFile:
    lock = rattler.LockFile([platform])
    lock.set_channels(ENVIRONMENT, [rattler.LockChannel(c) for c in channels])
    for record in records:
        lock.add_conda_package(ENVIRONMENT, platform, record)
    return lock


def read_lock(path: Path) -> tuple[rattler.LockPlatform, list[Record]]:
    """The platform and records of pixi.lock.

    The platform object must come from the lock itself: a fresh ``LockPlatform`` passed to
    ``conda_repodata_records_for_platform`` made rattler panic.
    """
    lock = rattler.LockFile.from_path(path)
    platform = lock.platforms()[0]
    environment = lock.environment(ENVIRONMENT)
    records = environment.conda_repodata_records_for_platform(platform) if environment else None
    return platform, records or []


# --- files -----------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_staged(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temp file and a rename, so it is never seen half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)
    log(f"wrote {path.name}")


def write_text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def roll_forward(ws: Workspace) -> None:
    """Move a committed transaction's files into place; safe to repeat after a crash."""
    for staged in (ws.txn_dir / ws.lockfile.name, ws.txn_dir / ws.manifest.name):
        if staged.exists():
            staged.replace(ws.root / staged.name)
            log(f"wrote {staged.name}")
    fsync_path(ws.root)
    shutil.rmtree(ws.txn_dir)


def commit(ws: Workspace, manifest: Manifest, lock: rattler.LockFile) -> None:
    """Stage the next manifest and lock, mark them complete, then move them into place."""
    shutil.rmtree(ws.txn_dir, ignore_errors=True)
    ws.txn_dir.mkdir(parents=True)
    (ws.txn_dir / ws.manifest.name).write_text(manifest.text())
    lock.to_path(ws.txn_dir / ws.lockfile.name)
    for name in (ws.manifest.name, ws.lockfile.name):
        fsync_path(ws.txn_dir / name)
    ws.commit_marker.touch()
    fsync_path(ws.commit_marker)
    fsync_path(ws.txn_dir)
    roll_forward(ws)


# --- solving and installing -------------------------------------------------------------


@functools.cache
def http_client() -> rattler.Client:
    """One client for the whole operation, built by a spare before its request arrives.

    Building one reads and parses the system's CA bundle (~20 ms), and ``solve`` and
    ``install`` would each build their own when given none.
    """
    return rattler.Client.default_client()


def prepare() -> None:
    """Work a spare worker does while it waits for its request, off the operation's clock.

    A failure here is left for the operation to meet again and report as its error.
    """
    with contextlib.suppress(Exception):  # functools.cache keeps no exception: tried again
        http_client()
        rattler.VirtualPackage.detect()  # the first call of a process costs a few ms


def link_config(directory: Path) -> rattler.Config | None:
    """Tell rattler that symlinks work where the prefix lives, found out once.

    Left to itself, rattler tries a symlink in the prefix before linking each package, on
    its blocking pool: about a fifth of a warm install of 100 small packages. One try in
    the same directory tree answers the same question; if it fails, rattler goes on asking
    per package.
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


async def solve(
    request: Request, platform: str, channels: Iterable[str], specs: list[str], locked: list[Record]
) -> list[Record]:
    """Solve ``specs``, preferring the ``locked`` records so unrelated packages stay put."""
    log(f"solving {', '.join(specs) or '(no dependencies)'}")
    started = time.monotonic()
    records = await rattler.solve(
        sources=list(channels),
        specs=specs,
        gateway=rattler.Gateway(cache_dir=request.repodata_cache_dir, client=http_client()),
        platforms=[platform, "noarch"],
        locked_packages=locked,
        virtual_packages=rattler.VirtualPackage.detect(),
    )
    log(f"solved in {time.monotonic() - started:.2f}s")
    return records


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
    """Turns rattler's install callbacks into log lines naming the package and version.

    rattler reports the same callbacks for a package it fetches as for one already in
    its cache (and none for downloads from a ``file://`` channel), so the cache is looked
    at first: the log then tells a fetch from a use of the cache."""

    def __init__(self, old: list[Record], new: list[Record], cache_dir: Path) -> None:
        self.old = {r.name.normalized: label(r) for r in old}
        self.new = {r.name.normalized: label(r) for r in new}
        self.cached = {r.name.normalized for r in new if cached(cache_dir, r)}
        self.cache_names: dict[int, str] = {}
        self.tokens = itertools.count(1)  # next() on a count is atomic; callbacks race
        self.logged_percent: dict[int, int] = {}

    def _token(self, name: str) -> int:
        token = next(self.tokens)
        self.cache_names[token] = name
        return token

    def on_populate_cache_start(self, operation: int, package_name: str) -> int:
        doing = "using cached" if package_name in self.cached else "fetching"
        log(f"{doing} {self.new.get(package_name, package_name)}")
        return self._token(self.new.get(package_name, package_name))

    def on_download_start(self, cache_entry: int) -> int:
        log(f"downloading {self.cache_names.get(cache_entry, '?')}")
        return cache_entry

    def on_download_progress(self, download_idx: int, progress: int, total: int | None) -> None:
        percent = progress * 100 // total if total else 0
        if percent // 10 > self.logged_percent.get(download_idx, 0) // 10:
            self.logged_percent[download_idx] = percent
            log(f"downloading {self.cache_names.get(download_idx, '?')}: {percent}%")

    def on_unlink_start(self, operation: int, package_name: str) -> int:
        log(f"unlinking {self.old.get(package_name, package_name)}")
        return operation

    def on_link_start(self, operation: int, package_name: str) -> int:
        log(f"linking {self.new.get(package_name, package_name)}")
        return operation


async def install(request: Request, old: list[Record], new: list[Record]) -> None:
    """Make the prefix hold exactly ``new``; rattler works out the difference itself."""
    prefix = request.workspace.prefix
    await rattler.install(
        new,
        target_prefix=prefix,
        cache_dir=request.cache_dir,
        show_progress=False,
        client=http_client(),
        config=link_config(request.workspace.root),
        reporter=Reporter(old, new, request.cache_dir),
    )
    log(f"prefix {prefix} holds {len(new)} packages")


# --- operations ------------------------------------------------------------------------


async def create(request: Request) -> None:
    ws = request.workspace
    deps = dict(dependency_entry(spec) for spec in request.specs)
    manifest = Manifest(request.name, request.channels, request.platform, deps)
    log(f"create {request.name!r} for {request.platform}: {', '.join(request.specs)}")
    log(f"channels: {', '.join(request.channels)}")
    records = await solve(request, request.platform, request.channels, manifest.specs(), [])
    log_changes([], records)
    ws.root.mkdir(parents=True)
    await install(request, [], records)
    platform = rattler.LockPlatform(request.platform)
    lock = build_lock(platform, request.channels, records)
    write_staged(ws.lockfile, lock.to_path)
    write_staged(ws.manifest, write_text(manifest.text()))


def next_dependencies(request: Request, current: dict[str, Dependency]) -> dict[str, Dependency]:
    """Install adds or replaces the named packages; remove drops them."""
    deps = dict(current)
    if request.op == "install":
        deps.update(dependency_entry(spec) for spec in request.specs)
    else:
        for name in request.specs:
            deps.pop(rattler.PackageName(name).normalized, None)
    return deps


async def update(request: Request) -> None:
    """Install or remove: solve, then change the prefix and commit manifest and lock."""
    ws = request.workspace
    if not ws.exists():
        raise WorkerError(f"environment {ws.root.name} does not exist")
    manifest = Manifest.read(ws.manifest)
    platform, old = read_lock(ws.lockfile)
    log(f"{request.op}: {', '.join(request.specs)}")
    log(f"channels: {', '.join(manifest.channels)}")
    deps = next_dependencies(request, manifest.dependencies)
    new_manifest = Manifest(manifest.name, manifest.channels, manifest.platform, deps)
    records = await solve(request, platform.name, manifest.channels, new_manifest.specs(), old)
    log_changes(old, records)
    ws.state_dir.mkdir(exist_ok=True)
    ws.dirty_marker.touch()
    await install(request, old, records)
    commit(ws, new_manifest, build_lock(platform, manifest.channels, records))
    ws.dirty_marker.unlink()


async def restore(request: Request) -> None:
    """Finish or undo an interrupted operation so the prefix matches pixi.lock again."""
    ws = request.workspace
    if not ws.exists():
        raise WorkerError("pixi.toml is missing: this is an incomplete create, delete it")
    if ws.commit_marker.exists():
        log("rolling forward a committed transaction")
        roll_forward(ws)
    elif ws.txn_dir.exists():
        log("discarding an uncommitted transaction")
        shutil.rmtree(ws.txn_dir)
    if ws.dirty_marker.exists():
        _, records = read_lock(ws.lockfile)
        log(f"rebuilding the prefix from pixi.lock ({len(records)} packages)")
        shutil.rmtree(ws.prefix, ignore_errors=True)
        await install(request, [], records)
        ws.dirty_marker.unlink()
    log("environment is consistent")


async def delete(request: Request) -> None:
    """Rename the workspace into the trash (the commit point), then remove it."""
    ws = request.workspace
    if not ws.root.exists():
        log("environment does not exist: nothing to delete")
        return
    if ws.lockfile.exists():
        for record in read_lock(ws.lockfile)[1]:
            log(f"removing {label(record)}")
    request.trash_dir.mkdir(parents=True, exist_ok=True)
    trash = request.trash_dir / f"{ws.root.name}.{secrets.token_hex(4)}"
    ws.root.rename(trash)
    log(f"deleted environment {ws.root.name}")
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        warn(f"warning: could not empty {trash}: {exc}")


HANDLERS = {
    "create": create,
    "install": update,
    "remove": update,
    "restore": restore,
    "delete": delete,
}


# --- entry point -----------------------------------------------------------------------


def error_message(exc: BaseException) -> str | None:
    """The user-facing message of an expected failure, None for a bug."""
    if isinstance(exc, WorkerError):
        return str(exc)
    for kind, headline in EXPECTED_ERRORS.items():
        if isinstance(exc, kind):
            return f"{headline}: {str(exc).strip()}"
    return None


def run(stdin_text: str) -> str | None:
    """Run the request; return None on success or the error message."""
    try:
        request = Request.from_json(json.loads(stdin_text))
        asyncio.run(HANDLERS[request.op](request))
        return None
    except json.JSONDecodeError as exc:
        return f"invalid request: {exc}"
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            flush_output()  # the traceback goes straight to stderr: keep the order
            traceback.print_exc()
            message = f"internal error: {type(exc).__name__}: {exc}"
        return message


def write_result(path: Path, error: str | None) -> None:
    result = {"success": error is None, "error": error or ""}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    prepare()
    request = sys.stdin.read()  # a spare worker waits here, started ahead of time
    threading.Thread(target=_flush_periodically, daemon=True).start()
    error = run(request)
    if error is not None:
        warn(f"error: {error}")
    flush_output()
    write_result(args.result, error)
    # Skip interpreter teardown: after an async rattler call it crashes in about one run in
    # ten (SIGSEGV, or SIGABRT in PyGILState_Release), which would turn a finished operation
    # into a crash in the agent's eyes.
    os._exit(0 if error is None else 1)


if __name__ == "__main__":
    main()
