"""Quotas: exceeding one is RESOURCE_EXHAUSTED with a message naming the limit's setting,
and one user at a limit does not stop another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, shared_agent: AgentProcess, channel_url: str
) -> Iterator[ApiProcess]:
    """A control plane with small limits on its own database, so that its dispatcher
    never runs other tests' jobs."""
    data_dir = tmp_path_factory.mktemp("limited")
    with fresh_database() as url:
        env = api_env(url, data_dir, shared_agent.addr, shared_agent.token, channel_url)
        env.update(
            DARB_MAX_PACKAGES_PER_REQUEST="3",
            DARB_MAX_ENVIRONMENTS_PER_USER="2",
            DARB_MAX_MESSAGE_BYTES="65536",
        )
        process = start_api(env, data_dir / "api.log")
        yield process
        process.stop()


def test_packages_per_request(limited: ApiProcess) -> None:
    client = limited.new_user()
    four = ["acme-core", "acme-utils", "acme-extras", "acme-tool"]
    env_id = "00000000-0000-4000-8000-000000000000"  # the count is checked first
    for call in (
        lambda: client.create("too-many", four),
        lambda: client.install(env_id, four),
        lambda: client.remove(env_id, four),
    ):
        code, details = _refusal(call)
        assert code == EXHAUSTED and "DARB_MAX_PACKAGES_PER_REQUEST" in details
        assert "4 packages" in details and "is 3" in details


def test_environments_per_user(limited: ApiProcess) -> None:
    alice, bob = limited.new_user(), limited.new_user()
    first = alice.create("one", ["acme-core"])
    alice.create("two", ["acme-core"])
    code, details = _refusal(lambda: alice.create("three", ["acme-core"]))
    assert code == EXHAUSTED and "DARB_MAX_ENVIRONMENTS_PER_USER" in details
    assert bob.create("three", ["acme-core"]).environment.name == "three"
    delete = alice.call(
        alice.envs.DeleteEnvironment,
        environments_pb2.DeleteEnvironmentRequest(id=first.environment.id),
    )
    assert alice.wait(delete.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert alice.create("three", ["acme-core"]).environment.name == "three"


def test_concurrent_creates_of_one_user_never_exceed_the_quota(limited: ApiProcess) -> None:
    """Each create locks its owner's row, then counts in a statement of its own: counts
    taken in the statement that waited for the lock would miss the create that held it."""
    user = limited.new_user()
    outcomes: list[grpc.StatusCode] = []

    def create(name: str) -> None:
        try:
            user.create(name, ["acme-core"])
            outcomes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(create, [f"race-{n}" for n in range(12)]))
    assert sorted(outcomes, key=str) == sorted([grpc.StatusCode.OK] * 2 + [EXHAUSTED] * 10, key=str)
    listed = user.call(user.envs.ListEnvironments, environments_pb2.ListEnvironmentsRequest())
    assert len(listed.environments) == 2


def test_active_jobs_per_user(api_factory: Callable[..., ApiProcess]) -> None:
    # No agent answers, so every job stays pending or running for the whole test.
    with fresh_database() as url:
        api = api_factory(
            url,
            DARB_MAX_ACTIVE_JOBS_PER_USER="3",
            executors="127.0.0.1:1",
            DARB_AGENT_LEASE_SECONDS="600",
        )
        _fill_the_active_jobs_quota(api)


def _fill_the_active_jobs_quota(api: ApiProcess) -> None:
    alice, bob = api.new_user(), api.new_user()
    env_id = alice.create("busy", ["acme-core"]).environment.id
    alice.install(env_id, ["acme-utils"])
    queued = alice.install(env_id, ["acme-extras"])
    for call in (
        lambda: alice.install(env_id, ["acme-tool"]),
        lambda: alice.remove(env_id, ["acme-core"]),
        lambda: alice.create("another", ["acme-core"]),
    ):
        code, details = _refusal(call)
        assert code == EXHAUSTED and "DARB_MAX_ACTIVE_JOBS_PER_USER" in details
    assert bob.create("busy", ["acme-core"]).job.status == common_pb2.JOB_STATUS_PENDING
    # An admin acting on Alice's environment counts against Alice's quota.
    admin = api.admin()
    assert _refusal(lambda: admin.install(env_id, ["acme-tool"]))[0] == EXHAUSTED
    # Cancelling frees a slot; deleting is always possible.
    alice.call(alice.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=queued.id))
    assert alice.install(env_id, ["acme-tool"]).status == common_pb2.JOB_STATUS_PENDING
    delete = environments_pb2.DeleteEnvironmentRequest(id=env_id)
    assert alice.call(alice.envs.DeleteEnvironment, delete).job.id


def test_max_message_size(limited: ApiProcess) -> None:
    client = limited.new_user()
    code, _ = _refusal(lambda: client.create("x" * 100_000, ["acme-core"]))
    assert code == EXHAUSTED
    code, details = _refusal(lambda: client.create("x" * 60_000, ["acme-core"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "environment name" in details


def test_default_max_message_size(api: ApiProcess) -> None:
    client: Client = api.new_user()
    code, _ = _refusal(lambda: client.install("0" * 36, ["x" * (5 * 1024 * 1024)]))
    assert code == EXHAUSTED
