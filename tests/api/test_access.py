"""Authentication, admin-only calls, and isolation between users for every RPC."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from darb.v1 import auth_pb2, common_pb2, environments_pb2, jobs_pb2, users_pb2
from testkit.control_plane import ApiProcess, Client, status_code


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_login_with_a_wrong_password_is_unauthenticated(api: ApiProcess) -> None:
    client = api.client()
    request = auth_pb2.LoginRequest(username="admin", password="wrong")
    assert code_of(lambda: client.auth.Login(request)) == grpc.StatusCode.UNAUTHENTICATED
    request = auth_pb2.LoginRequest(username="nobody", password="wrong")
    assert code_of(lambda: client.auth.Login(request)) == grpc.StatusCode.UNAUTHENTICATED


def test_logout_ends_that_token_at_once_in_every_process(
    api_factory: Callable[..., ApiProcess], own_database: str
) -> None:
    """Logout refuses the call's token from its answer on, in both processes (each had
    it cached); the user's other token goes on working."""
    api = api_factory(own_database, DARB_API_PROCESSES="2")
    user = api.new_user()
    other = api.login(user.user.username, "password-1")
    me = users_pb2.GetCurrentUserRequest()
    clients = [api.own_connection(user.token) for _ in range(8)]
    for client in clients:
        for _ in range(3):
            assert client.call(client.users.GetCurrentUser, me).user.id == user.user.id
    assert user.call(user.auth.Logout, auth_pb2.LogoutRequest()) == auth_pb2.LogoutResponse()
    deadline = time.monotonic() + 0.5  # a NOTIFY's delivery, far below the cache's TTL
    while True:
        codes = [status_code(lambda: c.call(c.users.GetCurrentUser, me)) for c in clients]  # noqa: B023
        if set(codes) == {grpc.StatusCode.UNAUTHENTICATED} or time.monotonic() > deadline:
            break
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * len(clients)
    assert other.call(other.users.GetCurrentUser, me).user.id == user.user.id
    # Ended already, or no token at all: nothing to end.
    again = code_of(lambda: user.call(user.auth.Logout, auth_pb2.LogoutRequest()))
    assert again == grpc.StatusCode.UNAUTHENTICATED
    anonymous = code_of(lambda: api.client().auth.Logout(auth_pb2.LogoutRequest()))
    assert anonymous == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer nope"),), (("authorization", "Basic x"),)]
)
def test_calls_without_a_valid_token_are_unauthenticated(
    api: ApiProcess, metadata: tuple[tuple[str, str], ...]
) -> None:
    client = api.client()
    calls = [
        lambda: client.users.GetCurrentUser(users_pb2.GetCurrentUserRequest(), metadata=metadata),
        lambda: client.envs.ListEnvironments(
            environments_pb2.ListEnvironmentsRequest(), metadata=metadata
        ),
        lambda: client.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata),
        lambda: list(client.jobs.WatchJob(jobs_pb2.WatchJobRequest(id="x"), metadata=metadata)),
    ]
    for call in calls:
        assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED


def test_user_management_is_for_admins(api: ApiProcess) -> None:
    user = api.new_user()
    me = user.call(user.users.GetCurrentUser, users_pb2.GetCurrentUserRequest()).user
    assert me.username == user.user.username and not me.admin
    create = users_pb2.CreateUserRequest(username="x-by-user", password="password-1")
    assert code_of(lambda: user.call(user.users.CreateUser, create)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    listing = users_pb2.ListUsersRequest()
    assert code_of(lambda: user.call(user.users.ListUsers, listing)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    admin = api.admin()
    names = [u.username for u in admin.call(admin.users.ListUsers, listing).users]
    assert "admin" in names and user.user.username in names
    duplicate = users_pb2.CreateUserRequest(username=user.user.username, password="password-1")
    assert code_of(lambda: admin.call(admin.users.CreateUser, duplicate)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    for bad in (
        users_pb2.CreateUserRequest(username="Bad Name", password="password-1"),
        users_pb2.CreateUserRequest(username="shortpw", password="short"),
    ):
        assert code_of(lambda bad=bad: admin.call(admin.users.CreateUser, bad)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def _every_call_on(client: Client, env_id: str, job_id: str) -> list[Callable[[], Any]]:
    envs, jobs = client.envs, client.jobs
    return [
        lambda: client.call(envs.GetEnvironment, environments_pb2.GetEnvironmentRequest(id=env_id)),
        lambda: client.call(
            envs.DeleteEnvironment, environments_pb2.DeleteEnvironmentRequest(id=env_id)
        ),
        lambda: client.install(env_id, ["acme-utils"]),
        lambda: client.remove(env_id, ["acme-core"]),
        lambda: client.packages(env_id),
        lambda: client.call(
            envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=env_id)
        ),
        lambda: client.call(jobs.ListJobs, jobs_pb2.ListJobsRequest(environment_id=env_id)),
        lambda: client.get_job(job_id),
        lambda: list(client.watch(job_id)),
        lambda: client.call(jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id)),
    ]


def test_users_see_only_their_own_environments_and_jobs(api: ApiProcess) -> None:
    alice, bob = api.new_user(), api.new_user()
    created = alice.create("shared-name", ["acme-core"])
    env_id, job_id = created.environment.id, created.job.id
    assert alice.wait(job_id).status == common_pb2.JOB_STATUS_COMPLETED

    # Another user's ids answer exactly as ids that do not exist.
    for call in _every_call_on(bob, env_id, job_id):
        assert code_of(call) == grpc.StatusCode.NOT_FOUND
    missing_env, missing_job = (
        "00000000-0000-4000-8000-000000000000",
        "0" * 8 + "-0000-4000-8000-" + "0" * 12,
    )
    for call in _every_call_on(bob, missing_env, missing_job):
        assert code_of(call) == grpc.StatusCode.NOT_FOUND

    # Bob's lists do not show Alice's things (other tests' environments shared with
    # everyone may be there), and Bob may reuse her environment name.
    listed = bob.call(bob.envs.ListEnvironments, environments_pb2.ListEnvironmentsRequest())
    assert all(environment.owner_id != alice.user.id for environment in listed.environments)
    assert not [e for e in listed.environments if e.role != common_pb2.ROLE_VIEWER]
    listed_jobs = bob.call(bob.jobs.ListJobs, jobs_pb2.ListJobsRequest()).jobs
    assert all(job.environment_id != env_id for job in listed_jobs)
    assert bob.create("shared-name", ["acme-core"]).environment.name == "shared-name"

    # Alice still sees and owns hers; the admin sees everyone's.
    assert alice.get_env(env_id).status == common_pb2.ENVIRONMENT_STATUS_READY
    admin = api.admin()
    assert admin.get_env(env_id).owner_id == alice.user.id
    assert admin.get_job(job_id).environment_id == env_id
