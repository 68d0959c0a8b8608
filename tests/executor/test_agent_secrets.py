"""What the agent writes down: never a secret, always the ids and outcome of each operation.

Secrets are the agent token (right or wrong), the admin password and the database URL;
they must not reach the agent's log, an error a caller sees, or a package manager's
environment. Operations log one ``key=value`` line when they start and one when they end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import textwrap
from pathlib import Path

import grpc
import pytest

from darb.executor.v1 import executor_pb2 as pb
from services.executor.engines.base import SECRET_VARIABLES
from testkit.agent import start_agent
from tests.executor.helpers import call, create, new_id, stream_lines
from tests.executor.test_agent_lifecycle import wait_until

TOKEN = "agent-secret-7f3a9c"
WRONG = "wrong-secret-51be20"
SECRETS = {
    "DARB_ADMIN_PASSWORD": "admin-secret-c0ffee",
    "DARB_DATABASE_URL": "postgresql+psycopg://darb:db-secret-d00d@127.0.0.1:1/darb",
}
SECRET_TEXTS = (TOKEN, WRONG, "admin-secret-c0ffee", "db-secret-d00d")
ENDED = re.compile(r"operation ended (?P<fields>.*)$", re.MULTILINE)


def ended(log_text: str, environment_id: str, kind: str) -> dict[str, str] | None:
    """The key=value fields of the 'operation ended' line of one operation, if logged."""
    for match in ENDED.finditer(log_text):
        pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', match["fields"])
        fields = {
            key: json.loads(value) if value.startswith('"') else value for key, value in pairs
        }
        if (fields.get("environment_id"), fields.get("kind")) == (environment_id, kind):
            return fields
    return None


def outcome_of(agent, environment_id: str, kind: str) -> str:
    fields = ended(agent.log_text(), environment_id, kind)
    assert fields is not None, agent.log_text()[-3000:]
    return fields["outcome"]


def error_details(agent, token: str) -> list[str]:
    """Call every RPC with ``token``; the details of each error the agent answered."""
    stub, metadata = agent.stub(), (("authorization", f"Bearer {token}"),)
    environment_id = new_id()
    calls = [
        lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=metadata),
        lambda: stub.ListPackages(
            pb.ListPackagesRequest(environment_id=environment_id), metadata=metadata
        ),
        lambda: list(
            stub.InstallPackages(
                pb.InstallPackagesRequest(environment_id=environment_id, packages=["acme-core"]),
                metadata=metadata,
            )
        ),
        lambda: list(
            stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(environment_id="bad", name="x"), metadata=metadata
            )
        ),
    ]
    details = []
    for rpc in calls:
        try:
            rpc()
        except grpc.RpcError as error:
            details.append(f"{error.code()} {error.details()} {error.debug_error_string()}")
    return details


def test_tokens_and_passwords_appear_in_no_log_and_no_error(agent_factory):
    agent = agent_factory(token=TOKEN, **SECRETS)
    environment_id, created = create(agent, "acme-core")
    failed = call(agent, "InstallPackages", environment_id=environment_id, packages=["acme-broken"])
    assert created.result.success and not failed.result.success
    wrong_details = error_details(agent, WRONG)
    assert len(wrong_details) == 4 and all("UNAUTHENTICATED" in d for d in wrong_details)
    seen = [
        agent.log_text(),
        *wrong_details,
        *error_details(agent, TOKEN),
        created.text,
        failed.text,
        failed.result.error,
    ]
    for text in seen:
        for secret in SECRET_TEXTS:
            assert secret not in text


def child_environments(parent_pid: int) -> list[dict[str, str]]:
    """The environment each live child of ``parent_pid`` was started with."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(status.read_text().rsplit(")", 1)[1].split()[1])
            raw = (status.parent / "environ").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent_pid:
            pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0"))
            found.append({pair[0]: pair[1] for pair in pairs if len(pair) == 2})
    return found


def test_the_builtin_worker_never_receives_the_secrets(agent_factory):
    """The spare worker waits for its request with the environment it will run with."""
    agent = agent_factory(token=TOKEN, **SECRETS)
    create(agent, "acme-core")  # one worker used; its replacement is the spare we read
    assert wait_until(lambda: child_environments(agent.process.pid), timeout=30)
    children = child_environments(agent.process.pid)
    own = (Path("/proc") / str(agent.process.pid) / "environ").read_bytes()
    assert TOKEN.encode() in own, "the agent itself has the token"
    for env in children:
        assert not set(SECRET_VARIABLES) & set(env)
        assert not any(secret in value for value in env.values() for secret in SECRET_TEXTS)


# A stand-in pixi (there is none on these machines): records its environment, creates the
# workspace on init, and sleeps when asked for acme-slow.
FAKE_PIXI = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    Path(os.environ["FAKE_PIXI_ENV"]).write_text(json.dumps(dict(os.environ)))
    if args[0] == "init":
        Path(args[-1]).mkdir(parents=True)
        Path(args[-1], "pixi.toml").write_text("[workspace]\\nname = 'x'\\n\\n[dependencies]\\n")
    if "acme-slow" in args:
        time.sleep(60)
    """
)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Agent settings that make the stand-in pixi the engine; it records to FAKE_PIXI_ENV."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pixi = bin_dir / "pixi"
    pixi.write_text(FAKE_PIXI.format(python=shutil.which("python3")))
    pixi.chmod(pixi.stat().st_mode | stat.S_IEXEC)
    return {
        "DARB_PIXI_ENGINE": "cli",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_PIXI_ENV": str(tmp_path / "pixi-env.json"),
    }


def test_the_pixi_cli_never_receives_the_secrets(agent_factory, cli_env):
    agent = agent_factory(token=TOKEN, **cli_env, **SECRETS)
    _, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error
    env = json.loads(Path(cli_env["FAKE_PIXI_ENV"]).read_text())
    assert "PATH" in env, "the record is the real environment"
    assert not set(SECRET_VARIABLES) & set(env)
    assert not any(secret in value for value in env.values() for secret in SECRET_TEXTS)


def test_operations_log_start_and_end_with_ids_engine_duration_and_outcome(shared_agent):
    environment_id, _ = create(shared_agent, "acme-core")
    failed = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-broken"]
    )
    log_text = shared_agent.log_text()
    assert (
        f"operation started environment_id={environment_id} kind=create engine=builtin"
        " specs=acme-core"
    ) in log_text
    created = ended(log_text, environment_id, "create")
    assert created is not None
    assert (created["engine"], created["outcome"]) == ("builtin", "success")
    assert re.fullmatch(r"\d+\.\d{3}s", created["duration"])
    install = ended(log_text, environment_id, "install")
    assert install is not None and install["outcome"] == "failed"
    assert install["error"] and install["error"] in failed.result.error


def test_long_spec_lists_are_cut_in_the_log(shared_agent):
    specs = [f"acme-missing-{i:03d} >=1.0" for i in range(40)]
    environment_id, outcome = create(shared_agent, *specs)
    assert not outcome.result.success
    started = next(
        line
        for line in shared_agent.log_text().splitlines()
        if f"operation started environment_id={environment_id}" in line
    )
    assert specs[0] in started and specs[-1] not in started
    assert f"({len(','.join(specs))} chars)" in started


def test_a_timed_out_operation_says_so(tmp_path, channel_url, cli_env):
    """The environment is made by an agent without a short timeout, so only the install
    (the stand-in sleeps 60 s for acme-slow) can run out of time."""
    data_dir = tmp_path / "data"
    with start_agent(data_dir, channel_url, extra_env=cli_env) as agent:
        environment_id, created = create(agent, "acme-core")
    assert created.result.success, created.result.error
    short = {**cli_env, "DARB_OPERATION_TIMEOUT": "1"}
    with start_agent(data_dir, channel_url, extra_env=short) as agent:
        call(agent, "InstallPackages", environment_id=environment_id, packages=["acme-slow"])
        assert outcome_of(agent, environment_id, "install") == "timed_out"


def test_a_cancelled_operation_says_so(agent_factory, cli_env):
    agent = agent_factory(**cli_env)
    environment_id, _ = create(agent, "acme-core")
    request = pb.InstallPackagesRequest(environment_id=environment_id, packages=["acme-slow"])
    stream = agent.stub().InstallPackages(request, metadata=agent.metadata, timeout=120)
    next(line for line in stream_lines(stream) if "started (pid" in line.text)
    stream.cancel()
    assert wait_until(lambda: ended(agent.log_text(), environment_id, "install"), timeout=30)
    assert outcome_of(agent, environment_id, "install") == "cancelled"
