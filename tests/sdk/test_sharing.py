"""Sharing environments through the SDK and the CLI against the real stack: policies
(share, unshare, etags), what a member sees and may do, ``owner/name``, and groups."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import darb
from darb.client import PERMISSIONS, POLICY_ATTEMPTS, quote
from testkit.control_plane import ApiProcess
from tests.sdk.conftest import CLI_TIMEOUT, DARB, Account, Cli, cli_env

WAIT = 120
PASSWORD = "password-1"


@dataclass
class Member:
    """A second user, with an SDK client and a CLI of their own."""

    username: str
    client: darb.Client
    cli: Cli


@pytest.fixture
def new_member(api: ApiProcess, tmp_path: Path) -> Iterator[Callable[[], Member]]:
    clients: list[darb.Client] = []

    def make() -> Member:
        username = api.new_user().user.username
        client = darb.Client(api.addr)
        client.login(username, PASSWORD)
        clients.append(client)
        cli = _cli(tmp_path / username, api.addr)
        assert cli("login", "--username", username, stdin=f"{PASSWORD}\n").returncode == 0
        return Member(username, client, cli)

    yield make
    for client in clients:
        client.close()


def _cli(directory: Path, address: str) -> Cli:
    directory.mkdir(parents=True, exist_ok=True)
    env = cli_env(directory, address)

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DARB), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=directory,
            timeout=CLI_TIMEOUT,
        )

    return run


def _ready(client: darb.Client, name: str) -> darb.Environment:
    environment, job = client.environments.create(name, packages=["acme-core"])
    done = client.jobs.wait(job.id, timeout=WAIT)
    assert done.status == darb.JobStatus.COMPLETED, done.error
    return client.environments.get(environment.id)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    return result.stderr.strip().splitlines()[-1]


def _roles(client: darb.Client) -> dict[str, darb.Role]:
    """The caller's role on each environment they see, by id. (Other tests' users may
    share theirs with everyone, so tests look for their own environments only.)"""
    return {environment.id: environment.role for environment in client.environments.list()}


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def test_members_and_filter_values() -> None:
    assert darb.models.member("bob") == "user:bob"
    assert darb.models.member("group:team") == "group:team"
    assert darb.models.member("allAuthenticatedUsers") == "allAuthenticatedUsers"
    with pytest.raises(ValueError):
        darb.models.member("robot:x")
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("back\\slash") == '"back\\\\slash"'
    policy = (
        darb.Policy({}).with_member("bob", darb.Role.EDITOR).with_member("amy", darb.Role.EDITOR)
    )
    policy = policy.with_member("group:ops", darb.Role.OWNER).with_member("bob", darb.Role.VIEWER)
    assert list(policy.bindings.items()) == [
        (darb.Role.OWNER, ("group:ops",)),
        (darb.Role.EDITOR, ("user:amy",)),
        (darb.Role.VIEWER, ("user:bob",)),
    ]
    assert darb.Policy.from_proto(policy.to_proto()) == policy
    assert policy.without_member("amy").bindings.get(darb.Role.EDITOR) is None


# SDK


def test_share_a_round_trip(
    client: darb.Client, account: Account, new_member: Callable[[], Member]
) -> None:
    bob = new_member()
    environment = _ready(client, "team-env")
    me = f"user:{account.username}"
    assert environment.owner == account.username and environment.role == darb.Role.OWNER

    policy = client.environments.policy(environment.id)
    assert policy.bindings == {darb.Role.OWNER: (me,)} and policy.etag
    assert client.environments.permissions(environment.id) == set(PERMISSIONS)
    shared_name = f"{account.username}/team-env"
    with pytest.raises(darb.errors.NotFound):
        bob.client.environments.resolve(shared_name)
    assert environment.id not in _roles(bob.client)

    shared = client.environments.share(environment.id, bob.username, "editor")
    assert shared.bindings == {
        darb.Role.OWNER: (me,),
        darb.Role.EDITOR: (f"user:{bob.username}",),
    }
    assert shared.etag and shared.etag != policy.etag
    assert client.environments.policy(environment.id) == shared

    [seen] = [e for e in bob.client.environments.list() if e.id == environment.id]
    assert (seen.owner, seen.role) == (account.username, darb.Role.EDITOR)
    assert environment.id in [e.id for e in bob.client.environments.list(filter="owner != me")]
    assert list(bob.client.environments.list(filter="owner = me")) == []
    assert bob.client.environments.resolve(shared_name).id == environment.id
    with pytest.raises(darb.errors.NotFound, match="no environment named 'team-env'"):
        bob.client.environments.resolve("team-env")  # a bare name is one's own only
    assert bob.client.environments.permissions(environment.id) == {
        "environments.get",
        "environments.update",
        "jobs.cancel",
    }
    assert bob.client.environments.permissions(environment.id, ["environments.delete"]) == set()
    with pytest.raises(darb.errors.PermissionDenied):
        bob.client.environments.share(environment.id, "allAuthenticatedUsers")

    # An editor changes packages; the job and the version say who did.
    job = bob.client.packages.install(environment.id, ["acme-utils"])
    assert job.created_by_username == bob.username and job.created_by == bob.client.whoami().id
    assert bob.client.jobs.wait(job.id, timeout=WAIT).status == darb.JobStatus.COMPLETED
    version = client.environments.version(environment.id)
    assert version.created_by_username == bob.username

    # Sharing again replaces the role; unsharing takes it away.
    viewer = client.environments.share(environment.id, f"user:{bob.username}")
    assert viewer.role_of(bob.username) == darb.Role.VIEWER
    assert _roles(bob.client)[environment.id] == darb.Role.VIEWER

    unshared = client.environments.unshare(environment.id, bob.username)
    assert unshared.bindings == {darb.Role.OWNER: (me,)}
    assert environment.id not in _roles(bob.client)
    with pytest.raises(darb.errors.NotFound):
        bob.client.environments.resolve(shared_name)
    with pytest.raises(darb.errors.NotFound):
        client.environments.unshare(environment.id, bob.username)


def test_resolve_quotes_the_names_it_filters_on(client: darb.Client) -> None:
    environment = _ready(client, "quoted")
    assert client.environments.resolve("quoted").id == environment.id
    with pytest.raises(darb.errors.InvalidArgument):
        client.environments.resolve('quoted" OR name != "x')
    with pytest.raises(darb.errors.InvalidArgument):
        client.environments.resolve('some"one/quoted')
    with pytest.raises(darb.errors.NotFound, match="no environment named 'nobody/quoted'"):
        client.environments.resolve("nobody/quoted")
    # The server reads the quoted values back: a quote in a value does not end it.
    assert list(client.environments.list(filter='name = "quo\\"ted"')) == []
    assert [e.id for e in client.environments.list(filter='name = "quoted"')] == [environment.id]


def test_a_stale_etag_is_aborted_and_share_reads_again(
    api: ApiProcess,
    client: darb.Client,
    account: Account,
    new_member: Callable[[], Member],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bob, carol = new_member(), new_member()
    environment = _ready(client, "contended")
    stale = client.environments.policy(environment.id)
    client.environments.share(environment.id, carol.username)  # the etag moves on
    with pytest.raises(darb.errors.Aborted):
        client.environments.set_policy(environment.id, stale.with_member("dave", darb.Role.VIEWER))

    # Between share's read and its write, another client (the same owner, elsewhere)
    # changes the policy: the write is ABORTED, and share starts over from a new read.
    with darb.Client(api.addr) as elsewhere:
        elsewhere.login(account.username, PASSWORD)
        real_policy = client.environments.policy
        real_set_policy = client.environments.set_policy
        reads: list[str] = []
        writes: list[str] = []

        def policy_then_a_concurrent_change(environment_id: str) -> darb.Policy:
            policy = real_policy(environment_id)
            reads.append(policy.etag)
            if len(reads) == 1:
                elsewhere.environments.share(environment_id, carol.username, darb.Role.EDITOR)
            return policy

        def set_policy(environment_id: str, policy: darb.Policy) -> darb.Policy:
            try:
                return real_set_policy(environment_id, policy)
            except darb.errors.Aborted:
                writes.append("aborted")
                raise
            finally:
                writes.append(policy.etag)

        monkeypatch.setattr(client.environments, "policy", policy_then_a_concurrent_change)
        monkeypatch.setattr(client.environments, "set_policy", set_policy)
        result = client.environments.share(environment.id, bob.username, darb.Role.EDITOR)

    assert len(reads) == 2 and reads[0] != reads[1]
    assert writes == ["aborted", reads[0], reads[1]]
    # Neither change is lost: carol's (made in between) and bob's.
    assert result.bindings[darb.Role.EDITOR] == tuple(
        sorted([f"user:{bob.username}", f"user:{carol.username}"])
    )
    assert real_policy(environment.id) == result


def test_share_gives_up_after_so_many_conflicts(
    client: darb.Client, new_member: Callable[[], Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, carol = new_member(), new_member()
    environment = _ready(client, "hot")
    real_policy = client.environments.policy
    reads = 0

    def always_changed(environment_id: str) -> darb.Policy:
        nonlocal reads
        reads += 1
        policy = real_policy(environment_id)
        # Someone else changes it right after every read (an empty etag overwrites).
        if policy.role_of(carol.username) is None:
            changed = policy.with_member(carol.username, darb.Role.VIEWER)
        else:
            changed = policy.without_member(carol.username)
        client.environments.set_policy(environment_id, darb.Policy(changed.bindings))
        return policy

    monkeypatch.setattr(client.environments, "policy", always_changed)
    with pytest.raises(darb.errors.Aborted):
        client.environments.share(environment.id, bob.username)
    assert reads == POLICY_ATTEMPTS
    assert real_policy(environment.id).role_of(bob.username) is None


def test_policy_rules_the_server_keeps(client: darb.Client, account: Account) -> None:
    environment = _ready(client, "ruled")
    policy = client.environments.policy(environment.id)
    with pytest.raises(darb.errors.DarbError) as refused:  # no owner would remain
        client.environments.unshare(environment.id, account.username)
    assert isinstance(refused.value, darb.errors.InvalidArgument | darb.errors.FailedPrecondition)
    assert client.environments.policy(environment.id) == policy
    with pytest.raises(darb.errors.InvalidArgument):
        client.environments.share(environment.id, "robot:x")
    with pytest.raises(darb.errors.InvalidArgument):
        client.environments.share(environment.id, "bob", "superuser")


def test_groups_through_the_sdk(client: darb.Client, new_member: Callable[[], Member]) -> None:
    bob = new_member()
    name = f"g{uuid.uuid4().hex[:10]}"
    group = client.groups.create(name)
    assert (group.name, group.member_count) == (name, 0)
    with pytest.raises(darb.errors.AlreadyExists):
        client.groups.create(name)
    client.groups.add_member(name, bob.username)
    client.groups.add_member(name, f"user:{bob.username}")  # again: no error
    assert list(client.groups.members(name)) == [bob.username]
    [listed] = [g for g in client.groups.list() if g.name == name]
    assert listed.member_count == 1 and listed.created_by == client.whoami().username
    assert [g.name for g in bob.client.groups.list()] == [name]
    assert bob.client.groups.get(name) == listed
    with pytest.raises(darb.errors.PermissionDenied):
        bob.client.groups.add_member(name, bob.username)

    environment = _ready(client, "for-the-group")
    client.environments.share(environment.id, f"group:{name}", darb.Role.EDITOR)
    assert _roles(bob.client)[environment.id] == darb.Role.EDITOR

    client.groups.remove_member(name, bob.username)
    assert environment.id not in _roles(bob.client)
    with pytest.raises(darb.errors.NotFound):
        client.groups.remove_member(name, bob.username)
    client.groups.delete(name)
    assert name not in [g.name for g in client.groups.list()]
    with pytest.raises(darb.errors.NotFound):
        client.groups.get(name)
    assert f"group:{name}" not in {
        m
        for members in client.environments.policy(environment.id).bindings.values()
        for m in members
    }


# CLI


def test_share_members_ls_shared_and_unshare_with_the_cli(
    logged_in: Cli,
    account: Account,
    new_member: Callable[[], Member],
    client: darb.Client,
    request: pytest.FixtureRequest,
) -> None:
    bob = new_member()
    environment = _ready(client, "cli-shared")
    # Shared with everyone below: never left so for other tests, whatever happens.
    owner_only = darb.Policy({darb.Role.OWNER: (f"user:{account.username}",)})
    request.addfinalizer(lambda: client.environments.set_policy(environment.id, owner_only))
    shared_name = f"{account.username}/cli-shared"

    out = _ok(logged_in("env", "share", "cli-shared", f"user:{bob.username}", "--role", "editor"))
    assert f"user:{bob.username} is an editor of {shared_name}" in out
    assert "viewer" in _ok(logged_in("env", "share", "cli-shared", "allAuthenticatedUsers"))
    assert _rows(_ok(logged_in("env", "members", "cli-shared"))) == [
        ["ROLE", "MEMBER"],
        ["owner", f"user:{account.username}"],
        ["editor", f"user:{bob.username}"],
        ["viewer", "allAuthenticatedUsers"],
    ]
    members = json.loads(_ok(logged_in("env", "members", "cli-shared", "-o", "json")))
    assert members["bindings"]["EDITOR"] == [f"user:{bob.username}"] and members["etag"]

    # The owner's own list shows the owner and the role.
    mine = _rows(_ok(logged_in("env", "ls")))
    assert mine[0] == ["NAME", "OWNER", "ROLE", "STATUS", "ID", "CREATED"]
    assert mine[1][:5] == ["cli-shared", account.username, "owner", "READY", environment.id]
    assert environment.id not in _ok(logged_in("env", "ls", "--shared"))
    # --name matches a pattern (a wildcard filter), or the whole name without a `*`.
    for pattern, listed in (("*-shar*", True), ("cli-*", True), ("cli-sh", False)):
        assert (environment.id in _ok(logged_in("env", "ls", "--name", pattern))) is listed

    # Bob sees it among those shared with him and names it owner/name.
    shared = _rows(_ok(bob.cli("env", "ls", "--shared")))
    assert shared[0] == mine[0]
    assert [row[:5] for row in shared if environment.id in row] == [
        ["cli-shared", account.username, "editor", "READY", environment.id]
    ]
    assert _rows(_ok(bob.cli("env", "ls", "--owner", "me"))) == [mine[0]]  # bob owns none
    assert f"id:              {environment.id}" in _ok(bob.cli("env", "show", shared_name))
    assert "acme-core" in _ok(bob.cli("pkg", "ls", shared_name))
    assert "no environment named 'cli-shared'" in _error(bob.cli("env", "show", "cli-shared"))
    assert _error(bob.cli("env", "share", shared_name, "user:someone-else"))

    out = _ok(logged_in("env", "unshare", "cli-shared", bob.username))
    assert f"user:{bob.username} has no role on {shared_name}" in out
    _ok(logged_in("env", "unshare", "cli-shared", "allAuthenticatedUsers"))
    assert environment.id not in _ok(bob.cli("env", "ls", "--shared"))
    assert f"no environment named '{shared_name}'" in _error(bob.cli("env", "show", shared_name))
    assert "no role" in _error(logged_in("env", "unshare", "cli-shared", bob.username))


def test_groups_with_the_cli(
    logged_in: Cli, account: Account, new_member: Callable[[], Member], client: darb.Client
) -> None:
    bob, carol = new_member(), new_member()
    name = f"g{uuid.uuid4().hex[:10]}"
    assert f"group {name}" in _ok(logged_in("group", "create", name))
    _ok(logged_in("group", "add", name, bob.username, carol.username))
    assert _ok(logged_in("group", "members", name)).split() == sorted(
        [bob.username, carol.username]
    )
    assert json.loads(_ok(logged_in("group", "members", name, "-o", "json"))) == sorted(
        [bob.username, carol.username]
    )
    rows = _rows(_ok(logged_in("group", "ls")))
    assert rows[0] == ["NAME", "MEMBERS", "CREATED", "BY", "CREATED"]
    assert [row[:3] for row in rows[1:]] == [[name, "2", account.username]]
    [group] = json.loads(_ok(logged_in("group", "ls", "-o", "json")))
    assert (group["name"], group["member_count"]) == (name, 2)
    assert name in _ok(bob.cli("group", "ls"))  # a member sees it too

    environment = _ready(client, "for-group")
    _ok(logged_in("env", "share", "for-group", f"group:{name}", "--role", "viewer"))
    assert ["viewer", f"group:{name}"] in _rows(_ok(logged_in("env", "members", "for-group")))
    [row] = [r for r in _rows(_ok(carol.cli("env", "ls", "--shared"))) if environment.id in r]
    assert row[:3] == ["for-group", account.username, "viewer"]

    _ok(logged_in("group", "remove", name, carol.username))
    assert _ok(logged_in("group", "members", name)).split() == [bob.username]
    assert environment.id not in _ok(carol.cli("env", "ls", "--shared"))
    assert environment.id in _ok(bob.cli("env", "ls", "--shared"))
    assert _error(logged_in("group", "remove", name, carol.username))
    assert _error(bob.cli("group", "rm", name))  # only its managers may delete it

    _ok(logged_in("group", "rm", name))
    assert _rows(_ok(logged_in("group", "ls"))) == [rows[0]]
    assert f"group:{name}" not in _ok(logged_in("env", "members", "for-group"))
    assert environment.id not in _ok(bob.cli("env", "ls", "--shared"))
    assert _error(logged_in("group", "members", name))
