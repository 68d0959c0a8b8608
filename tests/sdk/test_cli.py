"""The ``darb`` command through its installed entry point, against the real stack."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import grpc
import pytest

from darb.v1 import common_pb2, users_pb2
from testkit.certs import CertAuthority
from testkit.control_plane import ApiProcess
from tests.sdk.conftest import DARB, Account, Cli, cli_env

# JSON keys are exactly the proto field names, whatever the proto gains.
USER_KEYS = {field.name for field in common_pb2.User.DESCRIPTOR.fields}
ENVIRONMENT_KEYS = {field.name for field in common_pb2.Environment.DESCRIPTOR.fields}
JOB_KEYS = {field.name for field in common_pb2.Job.DESCRIPTOR.fields}
PACKAGE_KEYS = {field.name for field in common_pb2.Package.DESCRIPTOR.fields}


def _one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single ``darb: error:`` line of a failed run (no traceback)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("darb: error: ")
    return line


def test_login_whoami_logout(cli: Cli, account: Account, tmp_path: Path, api: ApiProcess) -> None:
    result = cli("login", "--username", account.username, stdin=f"{account.password}\n")
    assert result.returncode == 0, result.stderr
    assert f"as {account.username}" in result.stdout
    path = tmp_path / "config" / "darb" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [saved] = json.loads(path.read_text()).values()
    assert saved["username"] == account.username and saved["token"]
    assert account.password not in path.read_text()
    for secret in (saved["token"], account.password):
        assert secret not in result.stdout + result.stderr

    assert cli("whoami").stdout.startswith(account.username)
    user = json.loads(cli("whoami", "--output", "json").stdout)
    assert set(user) == USER_KEYS
    assert user["username"] == account.username and user["admin"] is False

    logout = cli("logout")
    assert logout.returncode == 0 and logout.stdout.startswith("Logged out of"), logout.stderr
    assert "not logged in" in _one_error_line(cli("whoami"))
    # The server ended the session: the token, were it copied, is refused.
    session = api.own_connection(saved["token"])
    with pytest.raises(grpc.RpcError) as refused:
        session.call(session.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cli("logout").stdout.startswith("Not logged in")


def test_logout_with_the_server_away_still_forgets_the_token(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "config" / "darb" / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"127.0.0.1:1": {"username": "someone", "token": "t0ken"}}))
    failed = _one_error_line(cli("--address", "127.0.0.1:1", "logout"))
    assert "the saved token is deleted, but the server did not end the session" in failed
    assert "cannot reach the darb API at 127.0.0.1:1" in failed
    assert json.loads(path.read_text()) == {}


def test_login_errors(cli: Cli, account: Account) -> None:
    wrong = cli("login", "--username", account.username, stdin="not-the-password\n")
    assert _one_error_line(wrong) == "darb: error: unknown username or wrong password"
    assert "--username is required" in _one_error_line(cli("login", stdin="pw\n"))
    unreachable = cli("--address", "127.0.0.1:1", "login", "--username", "x", stdin="pw\n")
    assert "cannot reach the darb API at 127.0.0.1:1" in _one_error_line(unreachable)


def test_followed_jobs_and_json_output(logged_in: Cli, tmp_path: Path) -> None:
    created = logged_in("env", "create", "demo", "-p", "acme-core ==1.0")
    assert created.returncode == 0, created.stderr
    assert "Creating environment demo" in created.stdout
    assert "solving acme-core ==1.0" in created.stdout  # a log line of the job
    assert "completed in" in created.stderr

    added = logged_in("pkg", "add", "demo", "acme-utils")
    assert added.returncode == 0, added.stderr
    assert "install   acme-utils 1.0" in added.stdout
    packages = json.loads(logged_in("pkg", "ls", "demo", "--output", "json").stdout)
    assert {p["name"]: p["version"] for p in packages} == {"acme-core": "1.0", "acme-utils": "1.0"}
    assert all(set(p) == PACKAGE_KEYS for p in packages)
    table = logged_in("pkg", "ls", "demo").stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "BUILD", "CHANNEL"]
    assert [row.split()[:2] for row in table[1:]] == [["acme-core", "1.0"], ["acme-utils", "1.0"]]

    [environment] = json.loads(logged_in("env", "list", "-o", "json").stdout)
    assert set(environment) == ENVIRONMENT_KEYS and environment["status"] == "READY"
    assert json.loads(logged_in("env", "show", environment["id"], "-o", "json").stdout) == (
        environment
    )
    assert "status:          READY" in logged_in("env", "show", "demo").stdout

    jobs = json.loads(logged_in("job", "ls", "--env", "demo", "-o", "json").stdout)
    assert [job["type"] for job in jobs] == ["INSTALL_PACKAGES", "CREATE_ENVIRONMENT"]
    assert all(set(job) == JOB_KEYS and job["status"] == "COMPLETED" for job in jobs)
    assert logged_in("job", "ls").stdout.splitlines()[1].split()[1:4] == [
        "INSTALL_PACKAGES",
        "COMPLETED",
        "demo",
    ]
    logs = logged_in("job", "logs", jobs[0]["id"]).stdout
    assert "install   acme-utils 1.0" in logs
    shown = json.loads(logged_in("job", "show", jobs[0]["id"], "-o", "json").stdout)
    assert shown["logs"] + "\n" == logs

    exported = logged_in("env", "export", "demo", "--dir", "out")
    assert exported.returncode == 0, exported.stderr
    assert "acme-utils" in (tmp_path / "out" / "pixi.toml").read_text()
    assert "acme-utils" in (tmp_path / "out" / "pixi.lock").read_text()
    assert "--force" in _one_error_line(logged_in("env", "export", "demo", "--dir", "out"))

    assert logged_in("pkg", "rm", "demo", "acme-utils").returncode == 0
    assert logged_in("env", "delete", "demo").returncode == 0
    header = ["NAME", "OWNER", "ROLE", "STATUS", "ID", "CREATED"]
    assert logged_in("env", "list").stdout.split() == header  # no environment any more
    assert _one_error_line(logged_in("env", "show", "demo")).endswith("no environment named 'demo'")


def test_a_failed_job_exits_non_zero(logged_in: Cli) -> None:
    result = logged_in("env", "create", "broken", "-p", "acme-broken")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("darb: error: job ")
    assert " failed: " in result.stderr
    [environment] = json.loads(logged_in("env", "list", "-o", "json").stdout)
    assert environment["status"] == "FAILED"


def test_no_wait_logs_follow_and_cancel(logged_in: Cli, slow_channel: tuple[str, str]) -> None:
    url, name = slow_channel
    created = logged_in("env", "create", "slow", "-p", name, "-c", url, "--no-wait")
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.splitlines()[-1].split()[1]
    queued = logged_in("pkg", "add", "slow", "acme-tool", "--no-wait")
    queued_id = queued.stdout.splitlines()[-1].split()[1]

    cancelled = logged_in("job", "cancel", queued_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {queued_id} cancelled"
    followed = logged_in("job", "logs", job_id, "-f")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == logged_in("job", "logs", job_id).stdout
    assert f"job {job_id} completed in" in followed.stderr
    late = logged_in("job", "cancel", job_id)
    assert "has already ended (COMPLETED)" in _one_error_line(late)
    assert _one_error_line(logged_in("job", "logs", queued_id, "-f")).endswith(
        f"job {queued_id} cancelled: cancelled by request"
    )


def test_errors_are_one_line_with_the_server_message(logged_in: Cli) -> None:
    bad_name = logged_in("env", "create", "Bad Name", "-p", "acme-core")
    assert "must be 1-64 characters" in _one_error_line(bad_name)
    assert "is not a UUID" in _one_error_line(logged_in("job", "show", "nope"))
    assert "not allowed" in _one_error_line(
        logged_in("env", "create", "x", "-p", "acme-core", "-c", "https://example.com/c")
    )
    # The request field the server refuses comes first, but not twice ("id 'nope' ...").
    assert _one_error_line(logged_in("env", "create", "x", "-p", "acme core ===")).startswith(
        "darb: error: packages: package spec 'acme core ===' is not a valid match spec"
    )
    assert _one_error_line(logged_in("job", "show", "nope")) == (
        "darb: error: id 'nope' is not a UUID"
    )
    usage = logged_in("env", "create")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_mutual_tls(
    tls_api: ApiProcess, ca: CertAuthority, account: Account, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, tls_api.addr)
    tls = ["--ca-file", str(ca.ca), "--cert-file", str(ca.client.cert)]
    tls += ["--key-file", str(ca.client.key)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DARB), *args],
            input=f"{account.password}\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    login = run(*tls, "login", "--username", account.username)
    assert login.returncode == 0, login.stderr
    assert run("whoami", *tls).stdout.startswith(account.username)
    assert "cannot reach" in _one_error_line(run("whoami", "--ca-file", str(ca.ca)))
