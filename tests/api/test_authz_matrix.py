"""Every control-plane RPC times every kind of caller, through a real control plane.

The callers: the environment's owner (its creator), a user:EDITOR, a user:VIEWER, a
member of a group bound as EDITOR, anyone signed in (an environment whose policy binds
allAuthenticatedUsers as VIEWER), a stranger (no role: NOT_FOUND, exactly as for ids that
do not exist), an admin, and no or an expired token. Group RPCs act on a group the owner
created and the group member belongs to. Calls that change things get a fresh target for
every cell, so cells do not interfere. The matrix is checked against the protos' method
list: a new RPC without a row fails ``test_the_matrix_covers_every_rpc``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from darb.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    common_pb2,
    environments_pb2,
    groups_pb2,
    jobs_pb2,
    users_pb2,
)
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database

OK = grpc.StatusCode.OK
NF = grpc.StatusCode.NOT_FOUND
PD = grpc.StatusCode.PERMISSION_DENIED
PRINCIPALS = ("owner", "editor", "viewer", "group", "everyone", "stranger", "admin")
NO_TOKEN = ("none", "expired")
Metadata = tuple[tuple[str, str], ...]
VIEWER, EDITOR, OWNER = common_pb2.ROLE_VIEWER, common_pb2.ROLE_EDITOR, common_pb2.ROLE_OWNER


@dataclass
class Target:
    """What one caller's cells act on: an environment with its job, and fresh ones."""

    world: World
    public: bool  # bound to allAuthenticatedUsers instead of the named members
    env_id: str = ""
    job_id: str = ""

    def fresh_env(self) -> str:
        owner = self.world.owner
        env_id = owner.create(f"e{uuid.uuid4().hex[:10]}", ["acme-core"]).environment.id
        owner.set_policy(env_id, self.world.policy(self.public))
        return env_id

    def fresh_job(self) -> str:
        return self.world.owner.install(self.env_id, ["acme-utils"]).id

    def fresh_group(self) -> str:
        """A group of the owner's, with the group member in it."""
        return self.world.group(f"g{uuid.uuid4().hex[:10]}")


@dataclass
class World:
    api: ApiProcess
    owner: Client
    admin: Client
    member: Client  # of the owner's groups
    editor: str = ""
    viewer: str = ""
    group_name: str = ""
    agent: str = ""  # the address of the one agent
    metadata: dict[str, Metadata] | None = None
    targets: dict[str, Target] | None = None

    def group(self, name: str) -> str:
        self.owner.call(self.owner.groups.CreateGroup, groups_pb2.CreateGroupRequest(name=name))
        request = groups_pb2.AddGroupMemberRequest(group=name, username=self.member.user.username)
        self.owner.call(self.owner.groups.AddGroupMember, request)
        return name

    def policy(self, public: bool) -> dict[str, int]:
        owner = {f"user:{self.owner.user.username}": OWNER}
        if public:
            return {**owner, "allAuthenticatedUsers": VIEWER}
        return {
            **owner,
            f"user:{self.editor}": EDITOR,
            f"user:{self.viewer}": VIEWER,
            f"group:{self.group_name}": EDITOR,
        }

    def fresh_user(self) -> str:
        request = users_pb2.CreateUserRequest(
            username=f"t{uuid.uuid4().hex[:12]}", password="password-1"
        )
        return self.admin.call(self.admin.users.CreateUser, request).user.id


def _expired_token(env: dict[str, str], log_path: Any) -> str:
    """A token from a control plane with a one-second lifetime, left to run out. Expiry
    is stored with the token, so every control plane on the database refuses it."""
    short = start_api({**env, "DARB_TOKEN_TTL": "1"}, log_path)
    try:
        token = short.admin().token
    finally:
        short.stop()
    time.sleep(1.5)
    return token


def _target(world: World, public: bool) -> Target:
    target = Target(world, public)
    target.env_id = target.fresh_env()
    created = world.owner.call(
        world.owner.jobs.ListJobs, jobs_pb2.ListJobsRequest(environment_id=target.env_id)
    ).jobs[0]
    assert world.owner.wait(created.id).status == common_pb2.JOB_STATUS_COMPLETED
    target.job_id = created.id
    return target


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, shared_agent: AgentProcess, channel_url: str
) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("authz")
    with fresh_database() as url:
        env = api_env(url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
        expired = _expired_token(env, data_dir / "short.log")
        api = start_api(env, data_dir / "api.log")
        owner, editor, viewer = api.new_user(), api.new_user(), api.new_user()
        member, stranger, everyone, admin = (
            api.new_user(),
            api.new_user(),
            api.new_user(),
            api.admin(),
        )
        world = World(api, owner, admin, member, editor.user.username, viewer.user.username)
        world.group_name = world.group("team")
        world.agent = shared_agent.addr
        shared, public = _target(world, public=False), _target(world, public=True)
        clients = {
            "owner": owner, "editor": editor, "viewer": viewer, "group": member,
            "everyone": everyone, "stranger": stranger, "admin": admin,
        }  # fmt: skip
        world.metadata = {name: client.metadata for name, client in clients.items()}
        world.metadata["none"] = ()
        world.metadata["expired"] = (("authorization", f"Bearer {expired}"),)
        world.targets = {name: public if name == "everyone" else shared for name in clients}
        world.targets.update(none=shared, expired=shared)
        yield world
        api.stop()


def _policy_of(t: Target) -> environments_pb2.Policy:
    request = environments_pb2.GetEnvironmentPolicyRequest(environment_id=t.env_id)
    return t.world.owner.call(t.world.owner.envs.GetEnvironmentPolicy, request).policy


def _logout_of_a_second_session(c: Client, md: Metadata) -> Any:
    """Logout of a fresh token of the caller's (ending the caller's own token would spoil
    every row after this one); without a valid token, Logout with what it has."""
    try:
        me = c.users.GetCurrentUser(users_pb2.GetCurrentUserRequest(), metadata=md).user
    except grpc.RpcError:
        return c.auth.Logout(auth_pb2.LogoutRequest(), metadata=md)
    password = ADMIN_PASSWORD if me.username == "admin" else "password-1"
    login = auth_pb2.LoginRequest(username=me.username, password=password)
    fresh = (("authorization", f"Bearer {c.auth.Login(login).token}"),)
    return c.auth.Logout(auth_pb2.LogoutRequest(), metadata=fresh)


E, J, G, U = environments_pb2, jobs_pb2, groups_pb2, users_pb2
# Each call takes the caller's target, its stubs (the owner's channel) and metadata.
CALLS: dict[str, Callable[[Target, Client, Metadata], Any]] = {
    "AuthService.Login": lambda t, c, md: c.auth.Login(
        auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), metadata=md
    ),
    "AuthService.Logout": lambda t, c, md: _logout_of_a_second_session(c, md),
    "UserService.GetCurrentUser": lambda t, c, md: c.users.GetCurrentUser(
        U.GetCurrentUserRequest(), metadata=md
    ),
    "UserService.CreateUser": lambda t, c, md: c.users.CreateUser(
        U.CreateUserRequest(username=f"n{uuid.uuid4().hex[:12]}", password="password-1"),
        metadata=md,
    ),
    "UserService.ListUsers": lambda t, c, md: c.users.ListUsers(U.ListUsersRequest(), metadata=md),
    "UserService.UpdateUser": lambda t, c, md: c.users.UpdateUser(
        U.UpdateUserRequest(id=t.world.owner.user.id, disabled=False), metadata=md
    ),
    "UserService.DeleteUser": lambda t, c, md: c.users.DeleteUser(
        U.DeleteUserRequest(id=t.world.fresh_user()), metadata=md
    ),
    "EnvironmentService.CreateEnvironment": lambda t, c, md: c.envs.CreateEnvironment(
        E.CreateEnvironmentRequest(name=f"c{uuid.uuid4().hex[:10]}", packages=["acme-core"]),
        metadata=md,
    ),
    "EnvironmentService.GetEnvironment": lambda t, c, md: c.envs.GetEnvironment(
        E.GetEnvironmentRequest(id=t.env_id), metadata=md
    ),
    "EnvironmentService.ListEnvironments": lambda t, c, md: c.envs.ListEnvironments(
        E.ListEnvironmentsRequest(filter="owner != me AND role = VIEWER"), metadata=md
    ),
    "EnvironmentService.DeleteEnvironment": lambda t, c, md: c.envs.DeleteEnvironment(
        E.DeleteEnvironmentRequest(id=t.fresh_env()), metadata=md
    ),
    "EnvironmentService.InstallPackages": lambda t, c, md: c.envs.InstallPackages(
        E.InstallPackagesRequest(environment_id=t.env_id, packages=["acme-utils"]), metadata=md
    ),
    "EnvironmentService.RemovePackages": lambda t, c, md: c.envs.RemovePackages(
        E.RemovePackagesRequest(environment_id=t.env_id, packages=["acme-utils"]), metadata=md
    ),
    "EnvironmentService.ListPackages": lambda t, c, md: c.envs.ListPackages(
        E.ListPackagesRequest(environment_id=t.env_id), metadata=md
    ),
    "EnvironmentService.ExportEnvironment": lambda t, c, md: c.envs.ExportEnvironment(
        E.ExportEnvironmentRequest(id=t.env_id), metadata=md
    ),
    "EnvironmentService.ListEnvironmentVersions": lambda t, c, md: c.envs.ListEnvironmentVersions(
        E.ListEnvironmentVersionsRequest(environment_id=t.env_id), metadata=md
    ),
    "EnvironmentService.GetEnvironmentVersion": lambda t, c, md: c.envs.GetEnvironmentVersion(
        E.GetEnvironmentVersionRequest(environment_id=t.env_id, version=1), metadata=md
    ),
    "EnvironmentService.RollbackEnvironment": lambda t, c, md: c.envs.RollbackEnvironment(
        E.RollbackEnvironmentRequest(environment_id=t.env_id, version=1), metadata=md
    ),
    "EnvironmentService.DiffEnvironmentVersions": lambda t, c, md: c.envs.DiffEnvironmentVersions(
        E.DiffEnvironmentVersionsRequest(environment_id=t.env_id, from_version=1), metadata=md
    ),
    "EnvironmentService.GetEnvironmentPolicy": lambda t, c, md: c.envs.GetEnvironmentPolicy(
        E.GetEnvironmentPolicyRequest(environment_id=t.env_id), metadata=md
    ),
    "EnvironmentService.SetEnvironmentPolicy": lambda t, c, md: c.envs.SetEnvironmentPolicy(
        E.SetEnvironmentPolicyRequest(environment_id=t.env_id, policy=_policy_of(t)), metadata=md
    ),
    "EnvironmentService.TestEnvironmentPermissions": lambda t, c, md: (
        c.envs.TestEnvironmentPermissions(
            E.TestEnvironmentPermissionsRequest(
                environment_id=t.env_id, permissions=["environments.get"]
            ),
            metadata=md,
        )
    ),
    "EnvironmentService.RebuildEnvironment": lambda t, c, md: c.envs.RebuildEnvironment(
        E.RebuildEnvironmentRequest(environment_id=t.env_id), metadata=md
    ),
    "EnvironmentService.MoveEnvironment": lambda t, c, md: c.envs.MoveEnvironment(
        E.MoveEnvironmentRequest(environment_id=t.env_id, agent=t.world.agent), metadata=md
    ),
    "AdminService.DrainAgent": lambda t, c, md: admin_pb2_grpc.AdminServiceStub(
        c.channel
    ).DrainAgent(admin_pb2.DrainAgentRequest(agent="127.0.0.1:1"), metadata=md),
    "AdminService.GetUsage": lambda t, c, md: admin_pb2_grpc.AdminServiceStub(c.channel).GetUsage(
        admin_pb2.GetUsageRequest(), metadata=md, timeout=120
    ),
    "AdminService.SweepPackageCache": lambda t, c, md: admin_pb2_grpc.AdminServiceStub(
        c.channel
    ).SweepPackageCache(admin_pb2.SweepPackageCacheRequest(), metadata=md, timeout=120),
    "JobService.GetJob": lambda t, c, md: c.jobs.GetJob(J.GetJobRequest(id=t.job_id), metadata=md),
    "JobService.ListJobs": lambda t, c, md: c.jobs.ListJobs(
        J.ListJobsRequest(environment_id=t.env_id), metadata=md
    ),
    "JobService.WatchJob": lambda t, c, md: list(
        c.jobs.WatchJob(J.WatchJobRequest(id=t.job_id), metadata=md, timeout=60)
    ),
    "JobService.CancelJob": lambda t, c, md: c.jobs.CancelJob(
        J.CancelJobRequest(id=t.fresh_job()), metadata=md
    ),
    "GroupService.CreateGroup": lambda t, c, md: c.groups.CreateGroup(
        G.CreateGroupRequest(name=f"n{uuid.uuid4().hex[:10]}"), metadata=md
    ),
    "GroupService.DeleteGroup": lambda t, c, md: c.groups.DeleteGroup(
        G.DeleteGroupRequest(name=t.fresh_group()), metadata=md
    ),
    "GroupService.ListGroups": lambda t, c, md: c.groups.ListGroups(
        G.ListGroupsRequest(), metadata=md
    ),
    "GroupService.AddGroupMember": lambda t, c, md: c.groups.AddGroupMember(
        G.AddGroupMemberRequest(group=t.fresh_group(), username=t.world.viewer), metadata=md
    ),
    "GroupService.RemoveGroupMember": lambda t, c, md: c.groups.RemoveGroupMember(
        G.RemoveGroupMemberRequest(group=t.fresh_group(), username=t.world.member.user.username),
        metadata=md,
    ),
    "GroupService.GetGroup": lambda t, c, md: c.groups.GetGroup(
        G.GetGroupRequest(name=t.world.group_name), metadata=md
    ),
    "GroupService.ListGroupMembers": lambda t, c, md: c.groups.ListGroupMembers(
        G.ListGroupMembersRequest(group=t.world.group_name), metadata=md
    ),
}

# Expected codes, in PRINCIPALS order: owner, editor, viewer, group, everyone, stranger,
# admin. Without a valid token every call but Login is UNAUTHENTICATED.
ANY_USER = (OK,) * 7
ADMIN_ONLY = (PD,) * 6 + (OK,)
VIEW = (OK, OK, OK, OK, OK, NF, OK)
EDIT = (OK, OK, PD, OK, PD, NF, OK)
OWN = (OK, PD, PD, PD, PD, NF, OK)
MANAGE_GROUP = (OK, PD, PD, PD, PD, PD, OK)
GROUP_MEMBERS = (OK, PD, PD, OK, PD, PD, OK)
EXPECTED: dict[str, tuple[grpc.StatusCode, ...]] = {
    "AuthService.Login": ANY_USER,
    "AuthService.Logout": ANY_USER,
    "UserService.GetCurrentUser": ANY_USER,
    **dict.fromkeys(
        ["UserService.CreateUser", "UserService.ListUsers", "UserService.UpdateUser"], ADMIN_ONLY
    ),
    "UserService.DeleteUser": ADMIN_ONLY,
    # The disk of the one agent; its sweep removes nothing younger than 30 days.
    **dict.fromkeys(["AdminService.GetUsage", "AdminService.SweepPackageCache"], ADMIN_ONLY),
    # A rebuild in place and a move to the agent the environment is on; a drain of an
    # agent that has no environment.
    **dict.fromkeys(
        [
            "EnvironmentService.RebuildEnvironment",
            "EnvironmentService.MoveEnvironment",
            "AdminService.DrainAgent",
        ],
        ADMIN_ONLY,
    ),
    "EnvironmentService.CreateEnvironment": ANY_USER,
    "EnvironmentService.ListEnvironments": ANY_USER,
    **dict.fromkeys(
        [
            "EnvironmentService.GetEnvironment",
            "EnvironmentService.ListPackages",
            "EnvironmentService.ExportEnvironment",
            "EnvironmentService.ListEnvironmentVersions",
            "EnvironmentService.GetEnvironmentVersion",
            "EnvironmentService.DiffEnvironmentVersions",
            "EnvironmentService.GetEnvironmentPolicy",
            "EnvironmentService.TestEnvironmentPermissions",
            "JobService.GetJob",
            "JobService.ListJobs",
            "JobService.WatchJob",
        ],
        VIEW,
    ),
    **dict.fromkeys(
        [
            "EnvironmentService.InstallPackages",
            "EnvironmentService.RemovePackages",
            "EnvironmentService.RollbackEnvironment",
            "JobService.CancelJob",
        ],
        EDIT,
    ),
    "EnvironmentService.DeleteEnvironment": OWN,
    "EnvironmentService.SetEnvironmentPolicy": OWN,
    "GroupService.CreateGroup": ANY_USER,
    "GroupService.ListGroups": ANY_USER,
    **dict.fromkeys(
        [
            "GroupService.DeleteGroup",
            "GroupService.AddGroupMember",
            "GroupService.RemoveGroupMember",
        ],
        MANAGE_GROUP,
    ),
    **dict.fromkeys(["GroupService.GetGroup", "GroupService.ListGroupMembers"], GROUP_MEMBERS),
}


def _expected(rpc: str, principal: str) -> grpc.StatusCode:
    if principal in NO_TOKEN:
        return OK if rpc == "AuthService.Login" else grpc.StatusCode.UNAUTHENTICATED
    return EXPECTED[rpc][PRINCIPALS.index(principal)]


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


def test_the_matrix_covers_every_rpc() -> None:
    every = {
        f"{service.name}.{method.name}"
        for module in (auth_pb2, users_pb2, environments_pb2, jobs_pb2, groups_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert every == set(CALLS) == set(EXPECTED)


@pytest.mark.parametrize("principal", PRINCIPALS + NO_TOKEN)
@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_authorization(world: World, rpc: str, principal: str) -> None:
    assert world.metadata is not None and world.targets is not None
    target = world.targets[principal]
    code, details = _code(lambda: CALLS[rpc](target, world.owner, world.metadata[principal]))  # type: ignore[index]
    assert code == _expected(rpc, principal), f"{rpc} as {principal}: {details}"
    if code == PD and rpc.startswith(("EnvironmentService", "JobService")):
        assert "role" in details, details  # it names the role needed
