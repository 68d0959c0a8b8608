"""Every bad input is refused with the right code and a message saying why."""

from __future__ import annotations

import grpc
import pytest

from darb.v1 import common_pb2, environments_pb2, jobs_pb2, users_pb2
from testkit.control_plane import ApiProcess, Client
from tests.api.test_access import code_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def user(api: ApiProcess) -> Client:
    return api.new_user()


@pytest.fixture(scope="module")
def ready_env(user: Client) -> str:
    created = user.create("inputs", ["acme-core"])
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    return created.environment.id


def _details(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    ("name", "packages", "channels", "manager", "says"),
    [
        ("", ["acme-core"], [], "", "environment name"),
        ("Upper", ["acme-core"], [], "", "environment name"),
        ("-dash", ["acme-core"], [], "", "environment name"),
        ("x" * 65, ["acme-core"], [], "", "environment name"),
        ("has space", ["acme-core"], [], "", "environment name"),
        ("abc\n", ["acme-core"], [], "", "environment name"),
        ("ok", [], [], "", "at least one package"),
        ("ok", ["acme-core", "acme-core >=1"], [], "", "more than once"),
        ("ok", ["--help"], [], "", "--help"),
        ("ok", ["acme-core\nacme-utils"], [], "", "control characters"),
        ("ok", ["acme core ==="], [], "", "acme core ==="),
        ("ok", ["acme-core"], ["https://evil.example/channel"], "", "not allowed"),
        ("ok", ["conda-forge::numpy"], [], "", "not allowed"),
        ("ok", ["https://evil.example/noarch/x-1-0.tar.bz2"], [], "", "not allowed"),
        ("ok", ["acme-core"], [], "conda", "package_manager"),
    ],
)
def test_create_refuses_bad_input(
    user: Client, name: str, packages: list[str], channels: list[str], manager: str, says: str
) -> None:
    request = environments_pb2.CreateEnvironmentRequest(
        name=name, packages=packages, channels=channels, package_manager=manager
    )
    code, details = _details(lambda: user.call(user.envs.CreateEnvironment, request))
    assert code == INVALID
    assert says in details


def test_names_are_unique_per_owner_among_live_environments(user: Client) -> None:
    created = user.create("unique-name", ["acme-core"])
    code, details = _details(lambda: user.create("unique-name", ["acme-core"]))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "unique-name" in details
    delete = user.call(
        user.envs.DeleteEnvironment,
        environments_pb2.DeleteEnvironmentRequest(id=created.environment.id),
    )
    assert user.wait(delete.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert user.create("unique-name", ["acme-core"]).environment.name == "unique-name"


def test_package_changes_refuse_bad_input(user: Client, ready_env: str) -> None:
    for packages, says in [
        ([], "at least one"),
        (["nope::acme-utils"], "not allowed"),
        (["-x"], "-x"),
    ]:
        code, details = _details(lambda p=packages: user.install(ready_env, p))
        assert code == INVALID and says in details
    for packages, says in [
        ([], "at least one"),
        (["acme-core >=1"], "not a valid"),
        (["a", "a"], "repeat"),
    ]:
        code, details = _details(lambda p=packages: user.remove(ready_env, p))
        assert code == INVALID and says in details


def test_ids_tokens_and_page_sizes_are_checked(user: Client) -> None:
    calls = [
        lambda: user.get_env("not-a-uuid"),
        lambda: user.get_env(""),
        lambda: user.get_job("123"),
        lambda: list(user.watch("123")),
        lambda: list(
            user.jobs.WatchJob(
                jobs_pb2.WatchJobRequest(id="00000000-0000-4000-8000-000000000000", after_seq=-1),
                metadata=user.metadata,
            )
        ),
        lambda: user.call(
            user.envs.ListEnvironments, environments_pb2.ListEnvironmentsRequest(page_token="%%")
        ),
        lambda: user.call(
            user.envs.ListEnvironments, environments_pb2.ListEnvironmentsRequest(page_size=-1)
        ),
        lambda: user.call(user.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_token="WyJ4Il0=")),
    ]
    for call in calls:
        assert code_of(call) == INVALID


def test_lists_page_through_everything(api: ApiProcess) -> None:
    client = api.new_user()
    names = [f"page-{index}" for index in range(5)]
    for name in names:
        client.create(name, ["acme-core"])
    seen, token = [], ""
    while True:
        page = client.call(
            client.envs.ListEnvironments,
            environments_pb2.ListEnvironmentsRequest(page_size=2, page_token=token),
        )
        seen += [env.name for env in page.environments]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    jobs, token = [], ""
    while True:
        page = client.call(
            client.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=2, page_token=token)
        )
        jobs += list(page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert len(jobs) == 5
    assert [job.created_at.ToDatetime() for job in jobs] == sorted(
        (job.created_at.ToDatetime() for job in jobs), reverse=True
    )


def test_a_job_that_ended_cannot_be_cancelled(user: Client, ready_env: str) -> None:
    listing = user.call(user.jobs.ListJobs, jobs_pb2.ListJobsRequest(environment_id=ready_env))
    done = listing.jobs[-1]
    code, details = _details(
        lambda: user.call(user.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=done.id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in details


@pytest.mark.parametrize("username", ["abc\n", "Upper", "", "x" * 65, "a b"])
def test_usernames_follow_the_same_rule(api: ApiProcess, username: str) -> None:
    admin = api.admin()
    request = users_pb2.CreateUserRequest(username=username, password="password-1")
    code, details = _details(lambda: admin.call(admin.users.CreateUser, request))
    assert code == INVALID
    assert details.startswith(f"username {username[:80]!r} must be 1-64 characters")
