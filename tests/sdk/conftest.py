"""SDK and CLI fixtures: the real stack (PostgreSQL, agent, control plane) and the real
``darb`` entry point run as a subprocess with its own config directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import darb
from tests.api.control_plane import ApiProcess, api_env, start_api
from tests.support.agent import AgentProcess
from tests.support.postgres import fresh_database

DARB = Path(sys.executable).parent / "darb"
CLI_TIMEOUT = 180


@dataclass(frozen=True)
class Account:
    username: str
    password: str


@pytest.fixture(scope="session")
def api(
    tmp_path_factory: pytest.TempPathFactory, shared_agent: AgentProcess, channel_url: str
) -> Iterator[ApiProcess]:
    """One control plane on a fresh PostgreSQL database; every test uses its own user."""
    data_dir = tmp_path_factory.mktemp("sdk-api")
    with fresh_database() as database_url:
        env = api_env(database_url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
        process = start_api(env, data_dir / "api.log")
        yield process
        process.stop()


@pytest.fixture
def account(api: ApiProcess) -> Account:
    """A fresh user, so tests sharing the server never see each other's environments."""
    return Account(api.new_user().user.username, "password-1")


@pytest.fixture
def client(api: ApiProcess, account: Account) -> Iterator[darb.Client]:
    with darb.Client(api.addr) as client:
        client.login(account.username, account.password)
        yield client


def cli_env(tmp_path: Path, address: str) -> dict[str, str]:
    """The environment of a CLI run: a private config dir and the server's address."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARB_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), DARB_API_ADDR=address)
    return env


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path, api: ApiProcess) -> Cli:
    """Runs the installed ``darb`` command; its standard input is ``stdin`` (not a TTY)."""
    env = cli_env(tmp_path, api.addr)

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DARB), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
        )

    return run


@pytest.fixture
def logged_in(cli: Cli, account: Account) -> Cli:
    """``cli`` after a successful ``darb login`` as a fresh user."""
    result = cli("login", "--username", account.username, stdin=f"{account.password}\n")
    assert result.returncode == 0, result.stderr
    return cli

