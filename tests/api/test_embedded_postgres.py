"""The embedded PostgreSQL server: the control plane's database when no URL is set.

Real processes throughout: the control plane starts the server from the wheel, is
stopped or killed, and started again on the same data directory.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from darb.v1 import common_pb2
from services.api.database.embedded import EmbeddedPostgres, process_alive
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess, api_env
from testkit.postgres import libpq_url
from testkit.processes import PROJECT_ROOT

START_TIMEOUT = 60


def _server_pid(data: Path) -> int:
    return int((data / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        assert time.monotonic() < deadline, f"postgres {pid} is still running"
        time.sleep(0.05)


def _refused_start(data: Path, agent: AgentProcess, channel_url: str) -> str:
    """Starts a control plane expected to refuse: its exit code must be 2 (bad settings
    or data) and its one line on stderr is returned."""
    env = api_env("", data, agent.addr, agent.token, channel_url)
    del env["DARB_DATABASE_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "services.api"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_the_default_database_is_an_embedded_server_that_keeps_everything(
    api_factory: Callable[..., ApiProcess], tmp_path: Path
) -> None:
    """No DARB_DATABASE_URL: a real PostgreSQL from the wheel in $DARB_DATA_DIR/postgres,
    on a Unix socket in a 0700 directory and no TCP port; it stops with a control plane
    that stops, and dies with one that is killed (SIGKILL); the next start finds every
    row."""
    data = tmp_path / "data"
    api = api_factory("")
    client = api.new_user()
    created = client.create("embedded", ["acme-core ==1.0"])
    assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    pgdata = data / "postgres"
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    url = (data / "postgres.url").read_text().strip()
    assert url.endswith(f"?host={pgdata}")
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)

    pid = _server_pid(data)
    api.stop(signal.SIGKILL)
    _wait_gone(pid)  # the parent-death signal: a fast shutdown

    again = api_factory("")
    client = again.login(client.user.username, "password-1")
    assert client.get_env(created.environment.id).status == common_pb2.ENVIRONMENT_STATUS_READY
    assert client.packages(created.environment.id) == {"acme-core": "1.0"}
    pid = _server_pid(data)
    assert again.stop() == 0
    _wait_gone(pid, timeout=5)  # a clean stop stops the server before the process ends


def test_a_server_left_running_on_the_data_is_stopped_and_replaced(
    api_factory: Callable[..., ApiProcess], tmp_path: Path
) -> None:
    """A server whose control plane is gone but which did not stop (here: started by the
    test itself and its lock let go, as the parent-death signal cannot fail on demand):
    the next control plane stops it and starts its own on the same data."""
    data = tmp_path / "data"
    data.mkdir()
    leftover = EmbeddedPostgres.in_data_dir(data)
    url = leftover.start()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    old_pid = _server_pid(data)
    assert leftover._lock is not None
    leftover._lock.close()  # as if its control plane had died
    leftover._lock = None

    api = api_factory("")
    assert not process_alive(old_pid)
    assert _server_pid(data) != old_pid
    api.admin()
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT value FROM kept").fetchall() == [("still here",)]
    leftover._process = None  # stopped by the control plane, not by this test


def test_a_second_control_plane_on_the_data_must_be_given_the_url(
    api_factory: Callable[..., ApiProcess],
    tmp_path: Path,
    shared_agent: AgentProcess,
    channel_url: str,
) -> None:
    data = tmp_path / "data"
    first = api_factory("")
    message = _refused_start(data, shared_agent, channel_url)
    url = (data / "postgres.url").read_text().strip()
    assert f"DARB_DATABASE_URL={url}" in message
    second = api_factory(url)  # as the message says: both serve the same state
    admin = second.login("admin", ADMIN_PASSWORD)
    assert admin.user.username == "admin"
    first.admin()


def test_a_data_directory_of_the_sqlite_era_is_refused_with_how_to_start_over(
    tmp_path: Path, shared_agent: AgentProcess, channel_url: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "darb.db").write_bytes(b"SQLite format 3\0")
    message = _refused_start(data, shared_agent, channel_url)
    assert str(data / "darb.db") in message
    assert f"remove (or move aside) the data directory {data}" in message
    assert not (data / "postgres").exists()


def test_the_server_runs_as_root_in_a_user_namespace_and_else_as_the_user(
    api_factory: Callable[..., ApiProcess], tmp_path: Path
) -> None:
    """PostgreSQL refuses root: as root it runs as ``nobody`` of its own user namespace,
    its files still root's; as an ordinary user it runs as that user."""
    api_factory("")
    pid = _server_pid(tmp_path / "data")
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    status = Path(f"/proc/{pid}/status").read_text()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid_map[:2] == ["65534", "0"], uid_map  # nobody inside is root outside
        assert real_uid == 0
    else:
        assert real_uid == os.geteuid()
    assert (tmp_path / "data" / "postgres").stat().st_uid == os.geteuid()
