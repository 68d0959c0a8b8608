"""Every control-plane RPC times {owner, other user, admin, no token, expired token}.

"Owner" owns the environment or job the call names (or is the account an admin call
changes); another user's ids answer NOT_FOUND exactly like ids that do not exist.
Calls that change things get a fresh target for every cell, so cells do not interfere.
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
    auth_pb2,
    common_pb2,
    environments_pb2,
    jobs_pb2,
    users_pb2,
)
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database

OK = grpc.StatusCode.OK
PRINCIPALS = ("owner", "other", "admin", "none", "expired")
Metadata = tuple[tuple[str, str], ...]


@dataclass
class World:
    api: ApiProcess
    owner: Client
    admin: Client
    metadata: dict[str, Metadata]
    env_id: str
    job_id: str

    def fresh_env(self) -> str:
        return self.owner.create(f"e{uuid.uuid4().hex[:10]}", ["acme-core"]).environment.id

    def fresh_job(self) -> str:
        return self.owner.install(self.env_id, ["acme-utils"]).id

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


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, shared_agent: AgentProcess, channel_url: str
) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("authz")
    with fresh_database() as url:
        env = api_env(url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
        expired = _expired_token(env, data_dir / "short.log")
        api = start_api(env, data_dir / "api.log")
        owner, other, admin = api.new_user(), api.new_user(), api.admin()
        created = owner.create("owned", ["acme-core"])
        assert owner.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
        metadata = {
            "owner": owner.metadata,
            "other": other.metadata,
            "admin": admin.metadata,
            "none": (),
            "expired": (("authorization", f"Bearer {expired}"),),
        }
        yield World(api, owner, admin, metadata, created.environment.id, created.job.id)
        api.stop()


# Each call takes the world and the caller's metadata and performs one RPC.
CALLS: dict[str, Callable[[World, Metadata], Any]] = {
    "AuthService.Login": lambda w, md: w.owner.auth.Login(
        auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), metadata=md
    ),
    "UserService.GetCurrentUser": lambda w, md: w.owner.users.GetCurrentUser(
        users_pb2.GetCurrentUserRequest(), metadata=md
    ),
    "UserService.CreateUser": lambda w, md: w.owner.users.CreateUser(
        users_pb2.CreateUserRequest(username=f"n{uuid.uuid4().hex[:12]}", password="password-1"),
        metadata=md,
    ),
    "UserService.ListUsers": lambda w, md: w.owner.users.ListUsers(
        users_pb2.ListUsersRequest(), metadata=md
    ),
    "UserService.UpdateUser": lambda w, md: w.owner.users.UpdateUser(
        users_pb2.UpdateUserRequest(id=w.owner.user.id, disabled=False), metadata=md
    ),
    "UserService.DeleteUser": lambda w, md: w.owner.users.DeleteUser(
        users_pb2.DeleteUserRequest(id=w.fresh_user()), metadata=md
    ),
    "EnvironmentService.CreateEnvironment": lambda w, md: w.owner.envs.CreateEnvironment(
        environments_pb2.CreateEnvironmentRequest(
            name=f"c{uuid.uuid4().hex[:10]}", packages=["acme-core"]
        ),
        metadata=md,
    ),
    "EnvironmentService.GetEnvironment": lambda w, md: w.owner.envs.GetEnvironment(
        environments_pb2.GetEnvironmentRequest(id=w.env_id), metadata=md
    ),
    "EnvironmentService.ListEnvironments": lambda w, md: w.owner.envs.ListEnvironments(
        environments_pb2.ListEnvironmentsRequest(), metadata=md
    ),
    "EnvironmentService.DeleteEnvironment": lambda w, md: w.owner.envs.DeleteEnvironment(
        environments_pb2.DeleteEnvironmentRequest(id=w.fresh_env()), metadata=md
    ),
    "EnvironmentService.InstallPackages": lambda w, md: w.owner.envs.InstallPackages(
        environments_pb2.InstallPackagesRequest(environment_id=w.env_id, packages=["acme-utils"]),
        metadata=md,
    ),
    "EnvironmentService.RemovePackages": lambda w, md: w.owner.envs.RemovePackages(
        environments_pb2.RemovePackagesRequest(environment_id=w.env_id, packages=["acme-utils"]),
        metadata=md,
    ),
    "EnvironmentService.ListPackages": lambda w, md: w.owner.envs.ListPackages(
        environments_pb2.ListPackagesRequest(environment_id=w.env_id), metadata=md
    ),
    "EnvironmentService.ExportEnvironment": lambda w, md: w.owner.envs.ExportEnvironment(
        environments_pb2.ExportEnvironmentRequest(id=w.env_id), metadata=md
    ),
    "EnvironmentService.ListEnvironmentVersions": lambda w, md: (
        w.owner.envs.ListEnvironmentVersions(
            environments_pb2.ListEnvironmentVersionsRequest(environment_id=w.env_id), metadata=md
        )
    ),
    "EnvironmentService.GetEnvironmentVersion": lambda w, md: w.owner.envs.GetEnvironmentVersion(
        environments_pb2.GetEnvironmentVersionRequest(environment_id=w.env_id, version=1),
        metadata=md,
    ),
    "EnvironmentService.RollbackEnvironment": lambda w, md: w.owner.envs.RollbackEnvironment(
        environments_pb2.RollbackEnvironmentRequest(environment_id=w.env_id, version=1),
        metadata=md,
    ),
    "EnvironmentService.DiffEnvironmentVersions": lambda w, md: (
        w.owner.envs.DiffEnvironmentVersions(
            environments_pb2.DiffEnvironmentVersionsRequest(
                environment_id=w.env_id, from_version=1, to_version=0
            ),
            metadata=md,
        )
    ),
    "JobService.GetJob": lambda w, md: w.owner.jobs.GetJob(
        jobs_pb2.GetJobRequest(id=w.job_id), metadata=md
    ),
    "JobService.ListJobs": lambda w, md: w.owner.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(environment_id=w.env_id), metadata=md
    ),
    "JobService.WatchJob": lambda w, md: list(
        w.owner.jobs.WatchJob(jobs_pb2.WatchJobRequest(id=w.job_id), metadata=md, timeout=60)
    ),
    "JobService.CancelJob": lambda w, md: w.owner.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(id=w.fresh_job()), metadata=md
    ),
}

# What owner, other user and admin get; without a valid token every call but Login is
# UNAUTHENTICATED.
PUBLIC = (OK, OK, OK)
ANY_USER = (OK, OK, OK)
ADMIN_ONLY = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, OK)
OWNED = (OK, grpc.StatusCode.NOT_FOUND, OK)
EXPECTED: dict[str, tuple[grpc.StatusCode, grpc.StatusCode, grpc.StatusCode]] = {
    "AuthService.Login": PUBLIC,
    "UserService.GetCurrentUser": ANY_USER,
    "UserService.CreateUser": ADMIN_ONLY,
    "UserService.ListUsers": ADMIN_ONLY,
    "UserService.UpdateUser": ADMIN_ONLY,
    "UserService.DeleteUser": ADMIN_ONLY,
    "EnvironmentService.CreateEnvironment": ANY_USER,
    "EnvironmentService.ListEnvironments": ANY_USER,
    **dict.fromkeys(
        [
            "EnvironmentService.GetEnvironment",
            "EnvironmentService.DeleteEnvironment",
            "EnvironmentService.InstallPackages",
            "EnvironmentService.RemovePackages",
            "EnvironmentService.ListPackages",
            "EnvironmentService.ExportEnvironment",
            "EnvironmentService.ListEnvironmentVersions",
            "EnvironmentService.GetEnvironmentVersion",
            "EnvironmentService.RollbackEnvironment",
            "EnvironmentService.DiffEnvironmentVersions",
            "JobService.GetJob",
            "JobService.ListJobs",
            "JobService.WatchJob",
            "JobService.CancelJob",
        ],
        OWNED,
    ),
}


def _expected(rpc: str, principal: str) -> grpc.StatusCode:
    if principal in ("none", "expired"):
        return OK if rpc == "AuthService.Login" else grpc.StatusCode.UNAUTHENTICATED
    return EXPECTED[rpc][PRINCIPALS.index(principal)]


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return OK


def test_the_matrix_covers_every_rpc() -> None:
    every = {
        f"{service.name}.{method.name}"
        for module in (auth_pb2, users_pb2, environments_pb2, jobs_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert every == set(CALLS) == set(EXPECTED)


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_authorization(world: World, rpc: str, principal: str) -> None:
    code = _code(lambda: CALLS[rpc](world, world.metadata[principal]))
    assert code == _expected(rpc, principal), f"{rpc} as {principal}"
