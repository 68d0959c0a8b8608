"""Generated bad input for every control-plane RPC gets an expected refusal, never INTERNAL
or UNKNOWN, and the service stays healthy and correct afterwards.

The inputs mix random unicode with hand-picked hostile values (paths, flags, shell,
NUL bytes, other channels inside specs, huge and negative numbers, forged page tokens).
The control plane runs on its own database with small quotas, so whatever passes
validation stays cheap.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darb.v1 import auth_pb2, common_pb2, environments_pb2, jobs_pb2, users_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database

EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HOSTILE = [
    "",
    " ",
    "\x00",
    "acme-core\x00",
    "../../etc",
    "../../etc/passwd",
    "/etc/passwd",
    "--manifest-path=/etc",
    "--help",
    "-x",
    "numpy; rm -rf /",
    "$(reboot)",
    "`id`",
    "acme-core\nacme-utils",
    "acme-core\r",
    "conda-forge::numpy",
    "https://evil.example/channel::acme-core",
    "acme-core[channel=https://evil.example/c]",
    "acme-core[url=https://evil.example/linux-64/x-1-0.conda]",
    "https://evil.example/linux-64/x-1-0.conda",
    "file:///etc::acme-core",
    "acme-core >=1",
    "acme-core",
    "ACME-CORE",
    "acme core ===",
    "a" * 65,
    "x" * 5000,
    "\u202eevil",
    "é🙂",
    "' OR 1=1 --",
    "%s%n%x",
    "null",
    "00000000-0000-4000-8000-000000000000",
]
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
text = st.one_of(
    st.sampled_from(HOSTILE),
    unicode_text,
    st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE), unicode_text),
)
texts = st.lists(text, max_size=30)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | unicode_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unicode_text, inner, max_size=3),
    max_leaves=6,
)
forged_tokens = st.builds(
    lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode(),
    st.lists(json_values, max_size=3),
)
page_tokens = st.one_of(text, forged_tokens, st.just("W" * 100_000))
ascii_headers = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100)


@dataclass
class World:
    api: ApiProcess
    user: Client
    admin: Client
    ids: list[str]  # ids of things that exist, of this user, another user and the admin
    accounts: list[str]  # accounts the admin may change: not the user the properties use
    ready_env: str

    def id_from(self, data: st.DataObject, known: list[str] | None = None) -> str:
        known = known or self.ids
        return data.draw(st.one_of(text, st.uuids().map(str), st.sampled_from(known)))


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, shared_agent: AgentProcess, channel_url: str
) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("properties")
    with fresh_database() as url:
        env = api_env(url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
        env.update(
            DARB_MAX_ENVIRONMENTS_PER_USER="4",
            DARB_MAX_ACTIVE_JOBS_PER_USER="6",
            DARB_MAX_PACKAGES_PER_REQUEST="20",
        )
        api = start_api(env, data_dir / "api.log")
        user, other, admin = api.new_user(), api.new_user(), api.admin()
        mine = user.create("mine", ["acme-core"])
        theirs = other.create("theirs", ["acme-core"])
        for client, created in ((user, mine), (other, theirs)):
            assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
        ids = [
            mine.environment.id,
            mine.job.id,
            theirs.environment.id,
            theirs.job.id,
            user.user.id,
            other.user.id,
            admin.user.id,
        ]
        yield World(api, user, admin, ids, [other.user.id, admin.user.id], mine.environment.id)
        api.stop()


def _expected(call: Callable[[], Any]) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() in EXPECTED, (exc.code(), exc.details())


@SETTINGS
@given(username=text, password=text)
def test_login(world: World, username: str, password: str) -> None:
    request = auth_pb2.LoginRequest(username=username, password=password)
    _expected(lambda: world.user.auth.Login(request, timeout=30))


@SETTINGS
@given(header=ascii_headers)
def test_any_authorization_header(world: World, header: str) -> None:
    metadata = (("authorization", header),)
    _expected(
        lambda: world.user.users.GetCurrentUser(
            users_pb2.GetCurrentUserRequest(), metadata=metadata, timeout=30
        )
    )
    _expected(
        lambda: world.user.envs.ListEnvironments(
            environments_pb2.ListEnvironmentsRequest(), metadata=metadata, timeout=30
        )
    )


@SETTINGS
@given(username=text, password=text, admin=st.booleans())
def test_create_user(world: World, username: str, password: str, admin: bool) -> None:
    request = users_pb2.CreateUserRequest(username=username, password=password, admin=admin)
    _expected(lambda: world.admin.call(world.admin.users.CreateUser, request))


@SETTINGS
@given(page_size=int32, page_token=page_tokens)
def test_list_users(world: World, page_size: int, page_token: str) -> None:
    request = users_pb2.ListUsersRequest(page_size=page_size, page_token=page_token)
    _expected(lambda: world.admin.call(world.admin.users.ListUsers, request))


@SETTINGS
@given(data=st.data(), password=st.none() | text, admin=st.none() | st.booleans())
def test_update_user(world: World, data: st.DataObject, password: str | None, admin: bool) -> None:
    request = users_pb2.UpdateUserRequest(id=world.id_from(data, world.accounts))
    # A new admin password would end the admin session the other properties use.
    if password is not None and request.id != world.admin.user.id:
        request.password = password
    if admin is not None:
        request.admin = admin
    request.disabled = False  # a disabled admin or user would stop the other properties
    _expected(lambda: world.admin.call(world.admin.users.UpdateUser, request))
    _expected(lambda: world.user.call(world.user.users.UpdateUser, request))


@SETTINGS
@given(data=st.data())
def test_delete_user(world: World, data: st.DataObject) -> None:
    request = users_pb2.DeleteUserRequest(id=world.id_from(data, world.accounts))
    _expected(lambda: world.admin.call(world.admin.users.DeleteUser, request))


@SETTINGS
@given(name=text, manager=text, channels=texts, packages=texts)
def test_create_environment(
    world: World, name: str, manager: str, channels: list[str], packages: list[str]
) -> None:
    request = environments_pb2.CreateEnvironmentRequest(
        name=name, package_manager=manager, channels=channels, packages=packages
    )
    _expected(lambda: world.user.call(world.user.envs.CreateEnvironment, request))


@SETTINGS
@given(data=st.data())
def test_calls_naming_an_environment(world: World, data: st.DataObject) -> None:
    env_id = world.id_from(data)
    envs = world.user.envs
    for method, request in (
        (envs.GetEnvironment, environments_pb2.GetEnvironmentRequest(id=env_id)),
        (envs.ListPackages, environments_pb2.ListPackagesRequest(environment_id=env_id)),
        (envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=env_id)),
    ):
        _expected(lambda method=method, request=request: world.user.call(method, request))
    if env_id != world.ready_env:
        request = environments_pb2.DeleteEnvironmentRequest(id=env_id)
        _expected(lambda: world.user.call(envs.DeleteEnvironment, request))


@SETTINGS
@given(data=st.data(), packages=texts)
def test_install_and_remove(world: World, data: st.DataObject, packages: list[str]) -> None:
    env_id = world.ready_env if data.draw(st.booleans()) else world.id_from(data)
    envs = world.user.envs
    install = environments_pb2.InstallPackagesRequest(environment_id=env_id, packages=packages)
    remove = environments_pb2.RemovePackagesRequest(environment_id=env_id, packages=packages)
    _expected(lambda: world.user.call(envs.InstallPackages, install))
    _expected(lambda: world.user.call(envs.RemovePackages, remove))


@SETTINGS
@given(page_size=int32, page_token=page_tokens)
def test_list_environments(world: World, page_size: int, page_token: str) -> None:
    request = environments_pb2.ListEnvironmentsRequest(page_size=page_size, page_token=page_token)
    _expected(lambda: world.user.call(world.user.envs.ListEnvironments, request))


@SETTINGS
@given(data=st.data(), page_size=int32, page_token=page_tokens, filtered=st.booleans())
def test_list_jobs(
    world: World, data: st.DataObject, page_size: int, page_token: str, filtered: bool
) -> None:
    request = jobs_pb2.ListJobsRequest(
        environment_id=world.id_from(data) if filtered else "",
        page_size=page_size,
        page_token=page_token,
    )
    _expected(lambda: world.user.call(world.user.jobs.ListJobs, request))


@SETTINGS
@given(data=st.data(), after_seq=int64)
def test_calls_naming_a_job(world: World, data: st.DataObject, after_seq: int) -> None:
    job_id = world.id_from(data)
    jobs = world.user.jobs
    _expected(lambda: world.user.call(jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id)))
    _expected(lambda: world.user.call(jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id)))
    watch = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after_seq)
    _expected(lambda: list(jobs.WatchJob(watch, metadata=world.user.metadata, timeout=60)))


def test_forged_page_tokens_are_invalid_arguments(world: World) -> None:
    """Regressions: each of these reached the database and failed there."""
    nested = "[" * 100_000 + "]" * 100_000
    forged = [[True], [2**70], ["a\x00b", "x"], ["x" * 1000, "y"], [None, None], nested]
    user, admin = world.user, world.admin
    for key in forged:
        raw = key if isinstance(key, str) else json.dumps(key)
        token = base64.urlsafe_b64encode(raw.encode()).decode()
        calls = [
            lambda t=token: user.call(user.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_token=t)),
            lambda t=token: user.call(
                user.envs.ListEnvironments, environments_pb2.ListEnvironmentsRequest(page_token=t)
            ),
            lambda t=token: admin.call(
                admin.users.ListUsers, users_pb2.ListUsersRequest(page_token=t)
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unstorable_usernames_are_refused_at_login(world: World) -> None:
    """Regression: a NUL byte or an overlong name reached PostgreSQL and failed there."""
    for username in ("a\x00b", "x" * 10_000):
        request = auth_pb2.LoginRequest(username=username, password="whatever-1")
        with pytest.raises(grpc.RpcError) as info:
            world.user.auth.Login(request)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_still_healthy_and_correct_afterwards(world: World) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(world.api.addr))
    response = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    # The sessions the properties used were never refused behind their back.
    for client in (world.user, world.admin):
        client.call(client.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())
    client = world.api.new_user()
    created = client.create(f"after-{uuid.uuid4().hex[:8]}", ["acme-core"])
    assert client.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert client.get_env(created.environment.id).status == common_pb2.ENVIRONMENT_STATUS_READY
    assert "acme-core" in client.packages(created.environment.id)
    assert "internal error" not in world.api.log_text()
