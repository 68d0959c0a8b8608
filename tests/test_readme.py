"""Every command block of README.md, run against a real ``make run``.

``sh`` blocks run in bash (``set -euo pipefail``), ``python`` blocks in the project's
Python, in the order they appear, with ``.venv/bin`` on PATH. Two blocks start services:
the quick start's ``make run`` and the PostgreSQL section's; they are started in the
background, waited for, and stopped with Ctrl-C (SIGINT) as a user would. ``make test``
is the command that runs this test, so it is the one command not run again here. The
only change made to the text is the service addresses: the test's servers listen on
free ports instead of 50051/50052/8080, so a developer's own ``make run`` is never disturbed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from testkit.postgres import fresh_database, libpq_url

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)
READY = "darb api listening on "


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def readme_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text())


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARB_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        DARB_DATA_DIR=str(tmp_path / "data"),
        DARB_API_ADDR=f"127.0.0.1:{free_port()}",
        DARB_EXECUTOR_ADDR=f"127.0.0.1:{free_port()}",
        DARB_WEB_ADDR=f"127.0.0.1:{free_port()}",
    )
    return env


def localized(text: str, env: dict[str, str]) -> str:
    return (
        text.replace("127.0.0.1:50051", env["DARB_API_ADDR"])
        .replace("127.0.0.1:50052", env["DARB_EXECUTOR_ADDR"])
        .replace("127.0.0.1:8080", env["DARB_WEB_ADDR"])
    )


@contextmanager
def running(command: str, env: dict[str, str], timeout: float = 180) -> Iterator[list[str]]:
    """Start a foreground command (``make run``) and wait until the control plane listens."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    try:
        for line in process.stdout:
            output.append(line)
            if READY in line:
                break
            assert time.monotonic() < deadline, "".join(output)
        else:
            pytest.fail(f"{command!r} ended before the service listened:\n{''.join(output)}")
        yield output
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches make, bash and the supervisor
        output.extend(process.stdout.readlines())
        process.wait(60)
        assert "darb stopped (executor exit 0, api exit 0, web exit 0)" in "".join(output)


def web_page(addr: str, path: str, timeout: float = 60) -> tuple[int, str]:
    """GET ``path`` from the web UI at ``addr`` (its status and text), waiting for it to
    listen: ``make run`` starts it beside the control plane, not after it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except urllib.error.URLError:  # not listening yet
            assert time.monotonic() < deadline, f"the web UI at {addr} never answered"
            time.sleep(0.2)


def run_block(kind: str, text: str, env: dict[str, str]) -> str:
    argv = (
        ["bash", "-euo", "pipefail", "-c", text] if kind == "sh" else [sys.executable, "-c", text]
    )
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README block failed:\n{text}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_quick_start_and_every_walkthrough_block_work(shell_env):
    blocks = readme_blocks()
    quick_start = blocks[0][1]
    assert [line.split("#")[0].strip() for line in quick_start.splitlines()] == [
        "make run",
        "make test",
    ]
    walkthrough = [block for block in blocks[1:] if "DARB_DATABASE_URL=" not in block[1]]
    assert len(walkthrough) >= 3, "the CLI, SDK and grpcurl walkthroughs"
    with running("make run", shell_env) as output:
        assert any("password123" in line and "development" in line for line in output)
        web = shell_env["DARB_WEB_ADDR"]
        assert web_page(web, "/healthz") == (200, "ok\n")
        status, login = web_page(web, "/login")
        assert status == 200 and 'id="sign-in"' in login, (status, login)
        for kind, text in walkthrough:
            printed = run_block(kind, localized(text, shell_env), shell_env)
            assert "Traceback" not in printed
    data = Path(shell_env["DARB_DATA_DIR"])
    assert (data / "analysis-export" / "pixi.toml").is_file()
    assert (data / "analysis-export" / "pixi.lock").is_file()


def test_the_external_database_section_works(shell_env):
    """The README's external-server command, pointed at a fresh database of the test
    run's server: the control plane migrates it and creates the admin there."""
    [(_, text)] = [block for block in readme_blocks() if "DARB_DATABASE_URL=" in block[1]]
    with fresh_database() as url:
        start = re.sub(r"DARB_DATABASE_URL=\S+", f"DARB_DATABASE_URL='{libpq_url(url)}'", text)
        with running(localized(start, shell_env).strip(), shell_env):
            pass
        with psycopg.connect(libpq_url(url)) as connection:
            users = connection.execute("SELECT username FROM users").fetchall()
        assert users == [("admin",)]
    assert not (Path(shell_env["DARB_DATA_DIR"]) / "postgres").exists(), "no embedded server"
