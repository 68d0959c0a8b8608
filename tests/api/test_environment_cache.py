"""GetEnvironment answers from each process's memory. The process that commits a change
drops its entry before it answers, so it never answers with what preceded its own
change; a trigger's NOTIFY (migration 0004) drops the entry in every other process
within the notification's delay, whatever made the change, SQL typed by hand included.
Entries live 5 s at most (bounding a lost notification)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import psycopg
import pytest

from darb.v1 import common_pb2, environments_pb2
from testkit.control_plane import ApiProcess, Client
from testkit.postgres import libpq_url

PROMPTLY = 1.0  # seconds; far below the 5 s an entry may live


def _sql(database_url: str, statement: str, *params: object, triggers: bool = True) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        if not triggers:  # what no path of the service does: change a row silently
            conn.execute("SET session_replication_role = replica")
        conn.execute(statement, params)


def _error_within(client: Client, environment_id: str, expected: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get_env(environment_id).error == expected:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def two_planes(api_factory: Callable[..., ApiProcess], own_database: str) -> list[ApiProcess]:
    return [api_factory(own_database), api_factory(own_database)]


def test_a_change_made_anywhere_reaches_every_process_promptly(
    two_planes: list[ApiProcess], own_database: str
) -> None:
    first, second = two_planes
    user = first.new_user()
    created = user.create("cached", ["acme-core"])
    environment_id = created.environment.id
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    on_second = second.login(user.user.username, "password-1")
    assert on_second.get_env(environment_id).status == common_pb2.ENVIRONMENT_STATUS_READY

    # A change that fires no trigger stays unseen: the answer really comes from memory.
    statement = "UPDATE environments SET error = %s WHERE id = %s"
    _sql(own_database, statement, "silent", environment_id, triggers=False)
    assert on_second.get_env(environment_id).error == ""
    # Any other change, here by SQL, is seen at once by both processes.
    _sql(own_database, statement, "by hand", environment_id)
    assert _error_within(on_second, environment_id, "by hand", PROMPTLY)
    assert _error_within(user, environment_id, "by hand", PROMPTLY)

    # A delete through the first process: the environment is gone from the second too.
    request = environments_pb2.DeleteEnvironmentRequest(id=environment_id)
    job = user.call(user.envs.DeleteEnvironment, request).job
    assert user.wait(job.id).status == common_pb2.JOB_STATUS_COMPLETED
    deadline = time.monotonic() + PROMPTLY
    while time.monotonic() < deadline and _found(on_second, environment_id):
        time.sleep(0.01)
    assert not _found(on_second, environment_id)


def _found(client: Client, environment_id: str) -> bool:
    try:
        client.get_env(environment_id)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


def test_a_process_answers_its_own_changes_at_once(
    api_factory: Callable[..., ApiProcess], own_database: str
) -> None:
    """Without the trigger, only the process's own dropping of its entries is left: the
    job's end (its dispatcher) and a delete (its handler, or the claim that follows at
    once) are each seen by the next read, although the entry cached before either would
    otherwise live 5 s."""
    api = api_factory(own_database)  # migrates the database
    _sql(own_database, "DROP TRIGGER environment_changed ON environments")
    user = api.new_user()
    created = user.create("mine", ["acme-core"])
    environment_id = created.environment.id
    assert user.get_env(environment_id).status != common_pb2.ENVIRONMENT_STATUS_READY  # cached
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert user.get_env(environment_id).status == common_pb2.ENVIRONMENT_STATUS_READY  # cached
    request = environments_pb2.DeleteEnvironmentRequest(id=environment_id)
    user.call(user.envs.DeleteEnvironment, request)
    assert user.get_env(environment_id).status == common_pb2.ENVIRONMENT_STATUS_DELETING


def test_a_cached_environment_is_still_only_shown_to_its_owner_and_admins(
    api: ApiProcess,
) -> None:
    owner, other, admin = api.new_user(), api.new_user(), api.admin()
    environment_id = owner.create("private", ["acme-core"]).environment.id
    for _ in range(2):  # the second read is served from memory
        assert owner.get_env(environment_id).id == environment_id
    assert not _found(other, environment_id)
    assert admin.get_env(environment_id).owner_id == owner.user.id
