"""The admin commands (``darb env rebuild|move``, ``darb admin drain|usage|sweep``) and
``client.admin``, through the installed entry point against the real stack: one admin
login, one user and one ready environment for the whole module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

import darb
from darb.models import AgentSweep, Drain
from darb.terminal import size
from darb.v1 import admin_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess
from tests.sdk.conftest import CLI_TIMEOUT, DARB, Cli, cli_env
from tests.sdk.test_cli import _one_error_line

ENVIRONMENT = "admin-cli"
NOT_AN_AGENT = "127.0.0.1:1"


def _keys(message: type[Message]) -> set[str]:
    """A message's field names: what the JSON's keys are, whatever the proto gains."""
    return {field.name for field in message.DESCRIPTOR.fields}


def _logged_in_cli(directory: Path, address: str, username: str, password: str) -> Cli:
    """The ``cli`` fixture's runner for a whole module, after ``darb login``."""
    options = {"env": cli_env(directory, address), "cwd": directory, "timeout": CLI_TIMEOUT}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        command = [str(DARB), *args]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, **options)

    login = run("login", "--username", username, stdin=f"{password}\n")
    assert login.returncode == 0, login.stderr
    return run


@pytest.fixture(scope="module")
def admin_cli(tmp_path_factory: pytest.TempPathFactory, api: ApiProcess) -> Cli:
    return _logged_in_cli(tmp_path_factory.mktemp("admin-cli"), api.addr, "admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def owner(api: ApiProcess) -> str:
    return str(api.new_user().user.username)


@pytest.fixture(scope="module")
def user_cli(tmp_path_factory: pytest.TempPathFactory, api: ApiProcess, owner: str) -> Cli:
    """The environment's owner, not an admin; the environment is made at once."""
    run = _logged_in_cli(tmp_path_factory.mktemp("user-cli"), api.addr, owner, "password-1")
    created = run("env", "create", ENVIRONMENT, "-p", "acme-utils")
    assert created.returncode == 0, created.stderr
    return run


def _json(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rebuild_and_move_keep_the_packages(
    admin_cli: Cli, user_cli: Cli, owner: str, agent: AgentProcess
) -> None:
    packages = _json(user_cli, "pkg", "ls", ENVIRONMENT)
    name = f"{owner}/{ENVIRONMENT}"
    rebuilt = admin_cli("env", "rebuild", name)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"Rebuilding {ENVIRONMENT} (" in rebuilt.stdout and "from version 1" in rebuilt.stdout
    assert f"rebuilt version 1 on agent {agent.addr}: same packages" in rebuilt.stdout
    assert "completed in" in rebuilt.stderr
    # To the agent it is on (the server allows it): rebuilt in place, nothing freed.
    moved = admin_cli("env", "move", name, agent.addr)
    assert moved.returncode == 0, moved.stderr
    assert f"rebuilt version 1 on agent {agent.addr}: same packages" in moved.stdout
    assert "freed" not in moved.stdout
    queued = admin_cli("env", "rebuild", name, "--no-wait")
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.splitlines()[-1].split()[1]
    assert admin_cli("job", "logs", job_id, "-f").returncode == 0
    assert "is not one of DARB_EXECUTORS" in _one_error_line(
        admin_cli("env", "move", name, NOT_AN_AGENT)
    )
    assert _json(user_cli, "pkg", "ls", ENVIRONMENT) == packages
    [version] = _json(user_cli, "env", "history", ENVIRONMENT)
    assert version["rebuild_count"] == 3
    assert _json(user_cli, "env", "show", ENVIRONMENT)["status"] == "READY"


def test_drain(admin_cli: Cli, agent: AgentProcess) -> None:
    # No environment is bound to an address no agent has: nothing to move.
    drained = admin_cli("admin", "drain", NOT_AN_AGENT)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.strip() == (
        f"Draining agent {NOT_AN_AGENT}: 0 move jobs queued,"
        " 0 environments with nothing on disk rebound"
    )
    drain = _json(admin_cli, "admin", "drain", NOT_AN_AGENT)
    assert drain == {"jobs": [], "rebound": 0}
    assert set(drain) == _keys(admin_pb2.DrainAgentResponse)
    # The only agent: there is nowhere to move its environments, and nothing is queued.
    assert "no other agent to move the environments of" in _one_error_line(
        admin_cli("admin", "drain", agent.addr)
    )


def test_usage(admin_cli: Cli, user_cli: Cli, owner: str, agent: AgentProcess) -> None:
    usage = _json(admin_cli, "admin", "usage")
    assert set(usage) == _keys(admin_pb2.GetUsageResponse)
    [measured] = usage["agents"]
    assert set(measured) == _keys(admin_pb2.AgentUsage)
    assert measured["agent"] == agent.addr and measured["reachable"], measured["error"]
    assert measured["package_cache_bytes"] > 0 and measured["environments"] >= 1
    assert 0 < measured["free_bytes"] <= measured["total_bytes"]
    [mine] = [user for user in usage["users"] if user["username"] == owner]
    assert set(mine) == _keys(admin_pb2.UserUsage)
    assert (mine["environments"], mine["unmeasured_environments"]) == (1, 0)
    assert mine["bytes"] > 0

    agents, users = admin_cli("admin", "usage").stdout.split("\n\n")
    header, row = agents.splitlines()
    assert header.split()[:3] == ["AGENT", "REACHABLE", "ENVS"]
    assert row.split()[:2] == [agent.addr, "yes"]
    # Sizes for people: "1.2 MB" is two words of the row.
    assert row.split()[5:7] == size(measured["package_cache_bytes"]).split()
    [user_row] = [line for line in users.splitlines() if line.startswith(f"{owner} ")]
    assert user_row.split()[1:4] == ["1", *size(mine["bytes"]).split()]


def test_sweep(admin_cli: Cli, user_cli: Cli, agent: AgentProcess) -> None:
    [one] = _json(admin_cli, "admin", "sweep", agent.addr)
    assert set(one) == _keys(admin_pb2.AgentSweep)
    assert one["agent"] == agent.addr and one["reachable"], one["error"]
    # DARB_PKG_CACHE_MAX_AGE is 30 days: every package is too young to go.
    assert (one["packages_removed"], one["bytes_freed"]) == (0, 0)
    assert one["packages_too_young"] > 0
    header, row = admin_cli("admin", "sweep").stdout.splitlines()
    assert header.split() == ["AGENT", "REMOVED", "FREED", "IN", "USE", "TOO", "YOUNG", "ERROR"]
    counts = [str(one["packages_in_use"]), str(one["packages_too_young"])]
    assert row.split() == [agent.addr, "0", "0", "B", *counts, "-"]
    assert "is not an agent of DARB_EXECUTORS" in _one_error_line(
        admin_cli("admin", "sweep", NOT_AN_AGENT)
    )
    assert _json(user_cli, "pkg", "ls", ENVIRONMENT)  # still there


def test_only_admins(user_cli: Cli, agent: AgentProcess) -> None:
    for rpc, args in (
        ("RebuildEnvironment", ("env", "rebuild", ENVIRONMENT)),
        ("MoveEnvironment", ("env", "move", ENVIRONMENT, agent.addr)),
        ("DrainAgent", ("admin", "drain", agent.addr)),
        ("GetUsage", ("admin", "usage")),
        ("SweepPackageCache", ("admin", "sweep")),
    ):
        assert _one_error_line(user_cli(*args)) == f"darb: error: {rpc} needs the admin role"


def test_sdk_admin_calls(api: ApiProcess, agent: AgentProcess, client: darb.Client) -> None:
    with darb.Client(api.addr) as admin:
        admin.login("admin", ADMIN_PASSWORD)
        assert admin.admin.drain(NOT_AN_AGENT) == Drain(jobs=(), rebound=0)
        usage = admin.admin.usage()
        assert [a.agent for a in usage.agents] == [agent.addr] and usage.agents[0].reachable
        [swept] = admin.admin.sweep_package_cache(agent.addr)
        assert isinstance(swept, AgentSweep) and swept.reachable
        with pytest.raises(darb.errors.NotFound):
            admin.admin.sweep_package_cache(NOT_AN_AGENT)
    for call in (
        lambda: client.admin.usage(),
        lambda: client.admin.sweep_package_cache(),
        lambda: client.admin.drain(agent.addr),
    ):
        with pytest.raises(darb.errors.PermissionDenied):
            call()
