"""A private PostgreSQL server for one test, which the test may stop and start at will.

The machine's shared server cannot be restarted (other test runs use it), so a test that
restarts PostgreSQL gets its own: ``initdb`` into a temporary directory, ``pg_ctl`` on a
free loopback port, trust auth for user ``postgres``. PostgreSQL refuses to run as root;
as root the binaries run as the ``postgres`` user, and the data directory is made in
``/tmp`` (pytest's own temporary directories are private to root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb``, else ``PATH``."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)

    def initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir}"
        log = str(self.data_dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session at once, as a restart by an operator does."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """A started private server, stopped and deleted afterwards. Raises RuntimeError when
    the PostgreSQL server binaries are not installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    parent = Path(tempfile.mkdtemp(prefix="darb-pg-"))
    data_dir = parent / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(parent, SERVER_USER)
        shutil.chown(data_dir, SERVER_USER)
    server = PostgresServer(bin_dir, data_dir, _free_port())
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        if server.running():
            with contextlib.suppress(subprocess.SubprocessError):
                server.stop("immediate")
        shutil.rmtree(parent, ignore_errors=True)
