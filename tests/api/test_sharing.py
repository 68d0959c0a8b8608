"""Sharing through a real control plane: policies read and written whole with etags,
groups, the ListEnvironments filter, who submitted a job, quotas on the owner, and a
change of membership seen at once by every control-plane process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest

from darb.v1 import common_pb2, environments_pb2, groups_pb2, jobs_pb2
from testkit.control_plane import ApiProcess, Client, status_code, watched_lines
from testkit.postgres import fresh_database, libpq_url

VIEWER, EDITOR, OWNER = common_pb2.ROLE_VIEWER, common_pb2.ROLE_EDITOR, common_pb2.ROLE_OWNER


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


def _policy(client: Client, env_id: str) -> environments_pb2.Policy:
    request = environments_pb2.GetEnvironmentPolicyRequest(environment_id=env_id)
    return client.call(client.envs.GetEnvironmentPolicy, request).policy


def _members(policy: environments_pb2.Policy) -> dict[str, int]:
    return {member: binding.role for binding in policy.bindings for member in binding.members}


def _listed(client: Client, filter_text: str = "") -> dict[str, common_pb2.Environment]:
    request = environments_pb2.ListEnvironmentsRequest(filter=filter_text, page_size=500)
    response = client.call(client.envs.ListEnvironments, request)
    return {environment.id: environment for environment in response.environments}


def _ready(client: Client, name: str) -> str:
    created = client.create(name, ["acme-core"])
    assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    return created.environment.id


def test_policy_round_trip_and_what_each_role_sees(api: ApiProcess) -> None:
    owner, bob, carol = api.new_user(), api.new_user(), api.new_user()
    env_id = _ready(owner, "shared")
    policy = _policy(owner, env_id)
    assert _members(policy) == {f"user:{owner.user.username}": OWNER} and policy.etag
    stored = owner.set_policy(
        env_id,
        {f"user:{owner.user.username}": OWNER, f"user:{bob.user.username}": EDITOR},
        etag=policy.etag,
    )
    assert stored.etag != policy.etag
    assert _members(_policy(bob, env_id))[f"user:{bob.user.username}"] == EDITOR
    seen = bob.get_env(env_id)
    assert (seen.owner, seen.role) == (owner.user.username, EDITOR)
    assert owner.get_env(env_id).role == OWNER
    # Bob's listing holds it with its owner and his role; Carol's does not.
    listed = _listed(bob)[env_id]
    assert (listed.owner, listed.role) == (owner.user.username, EDITOR)
    assert env_id not in _listed(carol)
    code, _ = _refusal(lambda: carol.get_env(env_id))
    assert code == grpc.StatusCode.NOT_FOUND
    # Bob installs: the job says he submitted it, the version too.
    job = bob.install(env_id, ["acme-utils"])
    assert (job.created_by, job.created_by_username) == (bob.user.id, bob.user.username)
    assert bob.wait(job.id).created_by_username == bob.user.username
    versions = owner.call(
        owner.envs.ListEnvironmentVersions,
        environments_pb2.ListEnvironmentVersionsRequest(environment_id=env_id),
    ).versions
    assert versions[0].created_by_username == bob.user.username
    # An editor may not delete or change the policy, and is told the role needed.
    code, details = _refusal(
        lambda: bob.call(
            bob.envs.DeleteEnvironment, environments_pb2.DeleteEnvironmentRequest(id=env_id)
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "owner role" in details


def test_permissions_are_the_subset_held(api: ApiProcess) -> None:
    owner, viewer = api.new_user(), api.new_user()
    env_id = owner.create("perms", ["acme-core"]).environment.id
    owner.set_policy(
        env_id, {f"user:{owner.user.username}": OWNER, f"user:{viewer.user.username}": VIEWER}
    )
    every = ["environments.get", "environments.update", "environments.delete",
             "environments.setPolicy", "jobs.cancel"]  # fmt: skip

    def held(client: Client) -> list[str]:
        request = environments_pb2.TestEnvironmentPermissionsRequest(
            environment_id=env_id, permissions=every
        )
        return list(client.call(client.envs.TestEnvironmentPermissions, request).permissions)

    assert held(owner) == every
    assert held(viewer) == ["environments.get"]
    request = environments_pb2.TestEnvironmentPermissionsRequest(
        environment_id=env_id, permissions=["environments.fly"]
    )
    code, details = _refusal(lambda: owner.call(owner.envs.TestEnvironmentPermissions, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "environments.fly" in details


def test_bad_policies_are_refused(api: ApiProcess) -> None:
    owner = api.new_user()
    env_id = owner.create("strict", ["acme-core"]).environment.id
    me = f"user:{owner.user.username}"
    invalid, precondition = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    cases = [
        ({me: OWNER, "user:nobody-like-this": VIEWER}, invalid, "nobody-like-this"),
        ({me: OWNER, "group:no-such-group": VIEWER}, invalid, "no-such-group"),
        ({me: OWNER, "bob": VIEWER}, invalid, "user:<username>"),
        ({me: EDITOR}, precondition, "owner"),
        ({me: VIEWER, "allAuthenticatedUsers": OWNER}, precondition, "owner"),
        ({me: OWNER}, grpc.StatusCode.ABORTED, "etag"),
    ]
    for members, code, word in cases:
        etag = "stale" if code == grpc.StatusCode.ABORTED else ""
        got, details = _refusal(lambda: owner.set_policy(env_id, members, etag=etag))  # noqa: B023
        assert (got, word in details) == (code, True), (members, got, details)
    assert _members(_policy(owner, env_id)) == {me: OWNER}  # nothing changed


def test_two_writers_from_one_etag_one_wins(api: ApiProcess) -> None:
    owner, bob, carol = api.new_user(), api.new_user(), api.new_user()
    env_id = owner.create("race", ["acme-core"]).environment.id
    etag = _policy(owner, env_id).etag
    me = f"user:{owner.user.username}"
    writers = [owner, api.login(owner.user.username, "password-1")]
    outcomes: list[Any] = [None, None]
    start = threading.Barrier(2)

    def write(index: int, member: str) -> None:
        start.wait()
        try:
            outcomes[index] = writers[index].set_policy(env_id, {me: OWNER, member: VIEWER}, etag)
        except grpc.RpcError as exc:
            outcomes[index] = exc.code()

    threads = [
        threading.Thread(target=write, args=(0, f"user:{bob.user.username}")),
        threading.Thread(target=write, args=(1, f"user:{carol.user.username}")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    aborted = [outcome for outcome in outcomes if outcome == grpc.StatusCode.ABORTED]
    won = [outcome for outcome in outcomes if isinstance(outcome, environments_pb2.Policy)]
    assert len(aborted) == 1 and len(won) == 1, outcomes
    assert _policy(owner, env_id) == won[0]


def test_groups_and_everyone(api: ApiProcess) -> None:
    owner, member, outsider = api.new_user(), api.new_user(), api.new_user()
    env_id = _ready(owner, "team-env")
    group = f"team-{owner.user.username}"
    owner.call(owner.groups.CreateGroup, groups_pb2.CreateGroupRequest(name=group))
    add = groups_pb2.AddGroupMemberRequest(group=group, username=member.user.username)
    owner.call(owner.groups.AddGroupMember, add)
    owner.set_policy(env_id, {f"user:{owner.user.username}": OWNER, f"group:{group}": EDITOR})
    assert member.get_env(env_id).role == EDITOR
    # The group's member may not manage it.
    code, _ = _refusal(lambda: member.call(member.groups.AddGroupMember, add))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Everyone signed in as viewer: the outsider sees it, with the higher role kept for
    # the member.
    owner.set_policy(
        env_id,
        {f"user:{owner.user.username}": OWNER, f"group:{group}": EDITOR,
         "allAuthenticatedUsers": VIEWER},
    )  # fmt: skip
    assert outsider.get_env(env_id).role == VIEWER and member.get_env(env_id).role == EDITOR
    assert _members(_policy(outsider, env_id))["allAuthenticatedUsers"] == VIEWER
    # Deleting the group drops its binding, and the policy's etag moves on.
    etag = _policy(owner, env_id).etag
    owner.call(owner.groups.DeleteGroup, groups_pb2.DeleteGroupRequest(name=group))
    assert f"group:{group}" not in _members(_policy(owner, env_id))
    assert _policy(owner, env_id).etag != etag
    assert member.get_env(env_id).role == VIEWER


def test_the_filter(api: ApiProcess) -> None:
    alice, bob = api.new_user(), api.new_user()
    mine = alice.create("filter-mine", ["acme-core"]).environment.id
    theirs = _ready(bob, "filter-theirs")
    bob.set_policy(
        theirs, {f"user:{bob.user.username}": OWNER, f"user:{alice.user.username}": EDITOR}
    )
    # Environments other tests shared with everyone are visible too: compare with those.
    everyone = {env for env, found in _listed(alice).items() if found.role == VIEWER}
    assert set(_listed(alice)) == {mine, theirs} | everyone
    assert set(_listed(alice, "owner = me")) == {mine}
    assert set(_listed(alice, "owner != me")) == {theirs} | everyone
    assert set(_listed(alice, f'owner = "{bob.user.username}"')) == {theirs}
    assert set(_listed(alice, 'name = "filter-theirs" AND role = EDITOR')) == {theirs}
    assert set(_listed(alice, "role = OWNER")) == {mine}
    assert set(_listed(alice, "status = READY AND role != VIEWER AND owner != me")) == {theirs}
    assert set(_listed(alice, "shared = true")) == {theirs} | everyone
    assert set(_listed(alice, "shared != TRUE")) == set(_listed(alice, "shared = false")) == {mine}
    for bad, position in [("name ~ x", 6), ("colour = red", 1), ("name = x OR owner = me", 10),
                          ("status = SHINY", 10), ("owner = me AND", 15),
                          ("shared = yes", 10)]:  # fmt: skip
        code, details = _refusal(lambda: _listed(alice, bad))  # noqa: B023
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert f"position {position}" in details, (bad, details)


def test_an_admin_holds_every_role_but_only_shares_are_shared(api: ApiProcess) -> None:
    admin, bob = api.new_user(admin=True), api.new_user()
    own = admin.create("admin-own", ["acme-core"]).environment.id
    unshared = bob.create("bob-private", ["acme-core"]).environment.id
    shared = _ready(bob, "bob-for-admin")
    bob.set_policy(
        shared, {f"user:{bob.user.username}": OWNER, f"user:{admin.user.username}": VIEWER}
    )
    assert _listed(admin)[unshared].role == OWNER  # an admin may view and change it all
    assert set(_listed(admin, "owner != me")) >= {unshared, shared}
    listed = _listed(admin, "shared = true")
    assert shared in listed and unshared not in listed and own not in listed
    unlisted = set(_listed(admin, "shared = false"))
    assert {own, unshared} <= unlisted and shared not in unlisted


def test_a_viewer_watching_gets_every_line(api: ApiProcess) -> None:
    owner, viewer = api.new_user(), api.new_user()
    env_id = _ready(owner, "watched")
    owner.set_policy(
        env_id, {f"user:{owner.user.username}": OWNER, f"user:{viewer.user.username}": VIEWER}
    )
    job = owner.install(env_id, ["acme-utils"])
    watched = list(watched_lines(viewer.watch(job.id)))
    stored = owner.get_job(job.id)
    assert stored.status == common_pb2.JOB_STATUS_COMPLETED
    assert [line.text for line in watched] == stored.logs.splitlines()
    assert [line.seq for line in watched] == list(range(1, len(watched) + 1))
    # A viewer may not cancel.
    pending = owner.install(env_id, ["acme-extras"])
    code, _ = _refusal(
        lambda: viewer.call(viewer.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=pending.id))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_an_editors_install_counts_against_the_owners_quota(
    api_factory: Callable[..., ApiProcess],
) -> None:
    # No agent answers, so jobs stay pending for the whole test.
    with fresh_database() as url:
        api = api_factory(url, DARB_MAX_ACTIVE_JOBS_PER_USER="2", executors="127.0.0.1:1",
                          DARB_AGENT_LEASE_SECONDS="600")  # fmt: skip
        owner, editor = api.new_user(), api.new_user()
        env_id = owner.create("quota", ["acme-core"]).environment.id
        owner.set_policy(
            env_id, {f"user:{owner.user.username}": OWNER, f"user:{editor.user.username}": EDITOR}
        )
        assert editor.install(env_id, ["acme-utils"]).status == common_pb2.JOB_STATUS_PENDING
        code, details = _refusal(lambda: editor.install(env_id, ["acme-extras"]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        code, _ = _refusal(lambda: owner.install(env_id, ["acme-extras"]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The editor's own quota is untouched.
        assert editor.create("own", ["acme-core"]).job.status == common_pb2.JOB_STATUS_PENDING


def test_a_removed_member_loses_access_at_once_in_every_process(
    api_factory: Callable[..., ApiProcess], own_database: str
) -> None:
    api = api_factory(own_database, DARB_API_PROCESSES="2")
    owner, member = api.new_user(), api.new_user()
    env_id = owner.create("revoked", ["acme-core"]).environment.id
    group = f"g-{owner.user.username}"
    owner.call(owner.groups.CreateGroup, groups_pb2.CreateGroupRequest(name=group))
    add = groups_pb2.AddGroupMemberRequest(group=group, username=member.user.username)
    owner.call(owner.groups.AddGroupMember, add)
    owner.set_policy(env_id, {f"user:{owner.user.username}": OWNER, f"group:{group}": VIEWER,
                              f"user:{member.user.username}": VIEWER})  # fmt: skip
    # Many connections of the member, spread over both processes, each caching the answer.
    clients = [api.own_connection(member.token) for _ in range(8)]
    for client in clients:
        for _ in range(3):
            assert client.get_env(env_id).role == VIEWER
    # Removed from the policy (still in the group): the group keeps the role.
    owner.set_policy(env_id, {f"user:{owner.user.username}": OWNER, f"group:{group}": VIEWER})
    assert all(client.get_env(env_id).role == VIEWER for client in clients)
    # Removed from the group too: gone on the very next call, in every process.
    remove = groups_pb2.RemoveGroupMemberRequest(group=group, username=member.user.username)
    owner.call(owner.groups.RemoveGroupMember, remove)
    deadline = time.monotonic() + 0.5  # a NOTIFY's delivery, far below the cache's TTL
    while True:
        codes = [status_code(lambda: client.get_env(env_id)) for client in clients]  # noqa: B023
        if all(code == grpc.StatusCode.NOT_FOUND for code in codes) or time.monotonic() > deadline:
            break
    assert codes == [grpc.StatusCode.NOT_FOUND] * len(clients)


@pytest.mark.parametrize("page_size", [1, 2])
def test_filtered_pages(api: ApiProcess, page_size: int) -> None:
    owner = api.new_user()
    ids = {owner.create(f"page-{n}", ["acme-core"]).environment.id for n in range(3)}
    seen: list[str] = []
    token = ""
    while True:
        request = environments_pb2.ListEnvironmentsRequest(
            filter="owner = me", page_size=page_size, page_token=token
        )
        response = owner.call(owner.envs.ListEnvironments, request)
        seen += [environment.id for environment in response.environments]
        token = response.next_page_token
        if not token:
            break
        other = environments_pb2.ListEnvironmentsRequest(filter="owner != me", page_token=token)
        code, _ = _refusal(lambda: owner.call(owner.envs.ListEnvironments, other))  # noqa: B023
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


MANY = 1200  # memberships past services/api/repo/environments.MANY_MEMBERSHIPS (1,000)


def _insert_many(database_url: str, owner_id: str, member_id: str, group: str) -> None:
    """MANY environments of the owner's, straight in the database: READY when n is even,
    the group bound as VIEWER to all, the member bound as EDITOR when n % 3 == 0."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO environments (id, owner_id, name, package_manager, channels, executor,"
            " status, error, manifest, lockfile, created_at, updated_at)"
            " SELECT gen_random_uuid()::text, %s, 'many-' || lpad(n::text, 4, '0'), 'pixi',"
            " '[]', 'none', CASE WHEN n %% 2 = 0 THEN 'READY' ELSE 'FAILED' END, '', '', '',"
            " now(), now() FROM generate_series(0, %s) AS n",
            (owner_id, MANY - 1),
        )
        conn.execute(
            "INSERT INTO environment_members (environment_id, member_key, user_id, group_id,"
            " role) SELECT e.id, 'user:' || %(owner)s, %(owner)s, NULL, 3 FROM environments e"
            " WHERE e.name LIKE 'many-%%'"
            " UNION ALL SELECT e.id, 'group:' || g.id, NULL, g.id, 1 FROM environments e,"
            " groups g WHERE e.name LIKE 'many-%%' AND g.name = %(group)s"
            " UNION ALL SELECT e.id, 'user:' || %(member)s, %(member)s, NULL, 2"
            " FROM environments e WHERE e.name LIKE 'many-%%'"
            " AND substr(e.name, 6)::int %% 3 = 0",
            {"owner": owner_id, "member": member_id, "group": group},
        )


def _all_pages(client: Client, filter_text: str) -> dict[str, int]:
    """Name -> role of every environment listed, page by page."""
    seen: dict[str, int] = {}
    token = ""
    while True:
        request = environments_pb2.ListEnvironmentsRequest(
            filter=filter_text, page_size=250, page_token=token
        )
        response = client.call(client.envs.ListEnvironments, request)
        seen.update({e.name: e.role for e in response.environments})
        token = response.next_page_token
        if not token:
            return seen


def _expected(group_bound: bool) -> dict[str, dict[str, int]]:
    """What each filter lists for the member, from how _insert_many bound them."""
    roles = {
        f"many-{n:04d}": EDITOR if n % 3 == 0 else VIEWER
        for n in range(MANY)
        if group_bound or n % 3 == 0
    }
    ready = {name: role for name, role in roles.items() if int(name[5:]) % 2 == 0}
    return {
        "": roles,
        "role = EDITOR": {name: role for name, role in roles.items() if role == EDITOR},
        "role = VIEWER AND status = READY": {n: r for n, r in ready.items() if r == VIEWER},
        'name = "many-0042"': {n: r for n, r in roles.items() if n == "many-0042"},
        "status != READY AND role != VIEWER": {
            n: r for n, r in roles.items() if n not in ready and r != VIEWER
        },
        "owner = me": {},
    }


def test_both_listing_plans_give_the_same_answers(
    api_factory: Callable[..., ApiProcess], own_database: str
) -> None:
    """A member who sees MANY environments through a group is listed by walking them in
    name order; once the group is gone (a third of them left) from their memberships.
    Either way every filter lists exactly what the bindings give, across pages."""
    api = api_factory(own_database)
    owner, member = api.new_user(), api.new_user()
    group = f"big-{owner.user.username}"
    owner.call(owner.groups.CreateGroup, groups_pb2.CreateGroupRequest(name=group))
    add = groups_pb2.AddGroupMemberRequest(group=group, username=member.user.username)
    owner.call(owner.groups.AddGroupMember, add)
    _insert_many(own_database, owner.user.id, member.user.id, group)
    for filter_text, expected in _expected(group_bound=True).items():
        assert _all_pages(member, filter_text) == expected, filter_text
    owner.call(owner.groups.DeleteGroup, groups_pb2.DeleteGroupRequest(name=group))
    for filter_text, expected in _expected(group_bound=False).items():
        assert _all_pages(member, filter_text) == expected, filter_text
