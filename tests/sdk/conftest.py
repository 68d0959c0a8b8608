"""SDK and CLI fixtures: the real stack (PostgreSQL, agent, control plane) and the real
``darb`` entry point run as a subprocess with its own config directory."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import darb
from testkit.agent import AgentProcess, start_agent
from testkit.certs import CertAuthority, make_ca
from testkit.channel import PackageSpec, build_channel
from testkit.control_plane import ApiProcess, api_env, start_api
from testkit.postgres import fresh_database

DARB = Path(sys.executable).parent / "darb"
CLI_TIMEOUT = 180
SLOW_PACKAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Account:
    username: str
    password: str


@dataclass(frozen=True)
class Channels:
    """The standard channel, where slow channels are made, and where the demo builds its."""

    standard: str
    slow_root: Path
    demo_dir: Path

    @property
    def allowed(self) -> str:
        return ",".join([self.standard, self.slow_root.as_uri(), self.demo_dir.as_uri()])


@pytest.fixture(scope="session")
def channels(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Channels:
    root = tmp_path_factory.mktemp("sdk-channels")
    return Channels(channel_url, root / "slow", root / "demo-channel")


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory, channels: Channels) -> Iterator[AgentProcess]:
    """An agent that also accepts the slow channels and the demo channel."""
    data_dir = tmp_path_factory.mktemp("sdk-agent") / "data"
    extra = {"DARB_ALLOWED_CHANNELS": channels.allowed}
    with start_agent(data_dir, channels.standard, token="t0ken", extra_env=extra) as agent:
        yield agent


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def _start_api(
    directory: Path, database_url: str, agent: AgentProcess, channels: Channels, **extra: str
) -> ApiProcess:
    env = api_env(
        database_url,
        directory,
        agent.addr,
        agent.token,
        channels.standard,
        DARB_ALLOWED_CHANNELS=channels.allowed,
        **extra,
    )
    return start_api(env, directory / "api.log")


@pytest.fixture(scope="session")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    agent: AgentProcess,
    channels: Channels,
) -> Iterator[ApiProcess]:
    """The control plane, on a fresh PostgreSQL database; every test uses its own user."""
    process = _start_api(tmp_path_factory.mktemp("sdk-api"), database_url, agent, channels)
    yield process
    process.stop()


@pytest.fixture
def slow_channel(channels: Channels) -> tuple[str, str]:
    """A new channel (URL, package name) of one package no agent has cached yet, so
    installing it takes about a second even on a fast machine."""
    name = f"slow-{uuid.uuid4().hex[:8]}"
    package = PackageSpec(name, "1.0", size_bytes=SLOW_PACKAGE_BYTES)
    return build_channel(channels.slow_root / name, [package]), name


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


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_api(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    agent: AgentProcess,
    channels: Channels,
    ca: CertAuthority,
) -> Iterator[ApiProcess]:
    """A second control plane on the same database that serves mutual TLS only."""
    directory = tmp_path_factory.mktemp("sdk-tls-api")
    tls = ca.server_env(client_auth=True)
    process = _start_api(directory, database_url, agent, channels, **tls)
    yield process
    process.stop()
