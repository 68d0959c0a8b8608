"""Login: guessing is slowed down per username, tokens expire, and a disabled or deleted
user's token stops working at once. Also the admin calls that disable and delete."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest

from darb.v1 import auth_pb2, common_pb2, environments_pb2, users_pb2
from testkit.control_plane import ApiProcess, Client
from testkit.postgres import fresh_database, libpq_url

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PASSWORD = "password-1"


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def _login(api: ApiProcess, username: str, password: str) -> Callable[[], Any]:
    request = auth_pb2.LoginRequest(username=username, password=password)
    return lambda: api.client().auth.Login(request)


def _me(client: Client) -> Callable[[], Any]:
    return lambda: client.call(client.users.GetCurrentUser, users_pb2.GetCurrentUserRequest())


def _update(by: Client, user_id: str, **fields: Any) -> common_pb2.User:
    request = users_pb2.UpdateUserRequest(id=user_id, **fields)
    return by.call(by.users.UpdateUser, request).user


@pytest.fixture
def fresh_db() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def test_failed_logins_are_slowed_down_per_username_in_every_process(
    api_factory: Callable[..., ApiProcess], fresh_db: str
) -> None:
    settings = {"DARB_LOGIN_MAX_FAILURES": "3", "DARB_LOGIN_BACKOFF": "4"}
    first, second = api_factory(fresh_db, **settings), api_factory(fresh_db, **settings)
    victim = first.new_user()
    name = victim.user.username
    for _ in range(3):
        assert _refusal(_login(first, name, "wrong-guess"))[0] == UNAUTHENTICATED
    # Blocked now, even with the right password and on the other control plane.
    for api in (first, second):
        code, details = _refusal(_login(api, name, PASSWORD))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "DARB_LOGIN_MAX_FAILURES" in details and "try again in" in details
    # Unknown usernames are treated alike, so the backoff does not reveal accounts.
    ghost = f"ghost{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert _refusal(_login(first, ghost, "wrong-guess"))[0] == UNAUTHENTICATED
    assert _refusal(_login(first, ghost, PASSWORD))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Other users are not affected, and the token the victim holds still works.
    assert first.new_user().user.username
    assert _me(victim)().user.username == name
    # After the wait the right password works and the count starts again.
    deadline = time.monotonic() + 60
    while True:
        try:
            first.login(name, PASSWORD)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline
            time.sleep(0.5)
    for _ in range(2):
        assert _refusal(_login(first, name, "wrong-guess"))[0] == UNAUTHENTICATED
    assert first.login(name, PASSWORD).user.username == name


def test_tokens_expire(api_factory: Callable[..., ApiProcess], fresh_db: str) -> None:
    api = api_factory(fresh_db, DARB_TOKEN_TTL="3")
    client = api.admin()
    assert _me(client)().user.admin
    time.sleep(3.5)
    code, details = _refusal(_me(client))
    assert code == UNAUTHENTICATED and "expired" in details


def test_a_disabled_user_is_locked_out_at_once(api: ApiProcess) -> None:
    admin, user = api.admin(), api.new_user()
    assert _me(user)().user.id == user.user.id  # the token is now cached
    assert _update(admin, user.user.id, disabled=True).disabled
    code, _ = _refusal(_me(user))
    assert code == UNAUTHENTICATED
    code, details = _refusal(_login(api, user.user.username, PASSWORD))
    assert code == UNAUTHENTICATED and "disabled" in details
    listed = admin.call(admin.users.ListUsers, users_pb2.ListUsersRequest(page_size=500)).users
    assert any(u.id == user.user.id and u.disabled for u in listed)
    # Enabled again: a new login works, the old token stays revoked.
    assert not _update(admin, user.user.id, disabled=False).disabled
    assert _refusal(_me(user))[0] == UNAUTHENTICATED
    assert api.login(user.user.username, PASSWORD).user.id == user.user.id


def _refused_within(call: Callable[[], Any], seconds: float) -> grpc.StatusCode:
    """The status of the first refusal of ``call`` within ``seconds``, polling."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
        except grpc.RpcError as error:
            return error.code()
        assert time.monotonic() < deadline, "still accepted"
        time.sleep(0.02)


def test_a_change_in_one_control_plane_reaches_the_others_token_cache(
    api_factory: Callable[..., ApiProcess], fresh_db: str
) -> None:
    """Tokens are cached per process for 5 s; a change made through another process drops
    them there within a NOTIFY's delay, far sooner."""
    first, second = api_factory(fresh_db), api_factory(fresh_db)
    admin = first.admin()
    user = first.new_user(admin=True)
    on_second = second.client()
    on_second.token, on_second.user = user.token, user.user
    listing = users_pb2.ListUsersRequest()
    assert on_second.call(on_second.users.ListUsers, listing).users  # cached as an admin
    _update(admin, user.user.id, admin=False)
    listed = lambda: on_second.call(on_second.users.ListUsers, listing)  # noqa: E731
    assert _refused_within(listed, 1.0) == grpc.StatusCode.PERMISSION_DENIED
    assert _me(on_second)().user.id == user.user.id  # cached again, as a plain user
    _update(admin, user.user.id, disabled=True)
    assert _refused_within(_me(on_second), 1.0) == UNAUTHENTICATED


def test_a_new_password_ends_the_old_sessions(api: ApiProcess) -> None:
    admin, user = api.admin(), api.new_user()
    _update(admin, user.user.id, password="new-password-2")
    assert _refusal(_me(user))[0] == UNAUTHENTICATED
    assert _refusal(_login(api, user.user.username, PASSWORD))[0] == UNAUTHENTICATED
    assert api.login(user.user.username, "new-password-2").user.id == user.user.id
    code, _ = _refusal(lambda: _update(admin, user.user.id, password="short"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_admin_rights_can_be_given_and_taken(api: ApiProcess) -> None:
    admin, user = api.admin(), api.new_user()
    listing = users_pb2.ListUsersRequest()
    assert _update(admin, user.user.id, admin=True).admin
    assert user.call(user.users.ListUsers, listing).users
    assert not _update(admin, user.user.id, admin=False).admin
    code, _ = _refusal(lambda: user.call(user.users.ListUsers, listing))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_admins_cannot_lock_themselves_out(api: ApiProcess) -> None:
    admin = api.admin()
    for change in ({"admin": False}, {"disabled": True}):
        code, details = _refusal(lambda change=change: _update(admin, admin.user.id, **change))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "your own account" in details
    request = users_pb2.DeleteUserRequest(id=admin.user.id)
    code, _ = _refusal(lambda: admin.call(admin.users.DeleteUser, request))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert _me(admin)().user.admin


def _stored_lines(database_url: str, job_id: str) -> int:
    with psycopg.connect(libpq_url(database_url)) as conn:
        query = "SELECT count(*) FROM job_log_lines WHERE job_id = %s"
        return conn.execute(query, (job_id,)).fetchone()[0]


def test_deleting_a_user(api: ApiProcess, database_url: str) -> None:
    admin, user = api.admin(), api.new_user()
    created = user.create("doomed", ["acme-core"])
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    assert _stored_lines(database_url, created.job.id) > 0
    delete_user = users_pb2.DeleteUserRequest(id=user.user.id)
    code, details = _refusal(lambda: admin.call(admin.users.DeleteUser, delete_user))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "1 environments" in details
    delete_env = environments_pb2.DeleteEnvironmentRequest(id=created.environment.id)
    job = user.call(user.envs.DeleteEnvironment, delete_env).job
    assert user.wait(job.id).status == common_pb2.JOB_STATUS_COMPLETED

    admin.call(admin.users.DeleteUser, delete_user)
    assert _refusal(_me(user))[0] == UNAUTHENTICATED
    assert _refusal(_login(api, user.user.username, PASSWORD))[0] == UNAUTHENTICATED
    assert _refusal(lambda: admin.get_job(created.job.id))[0] == grpc.StatusCode.NOT_FOUND
    assert _stored_lines(database_url, created.job.id) == 0  # no key cascades (0003)
    code, _ = _refusal(lambda: admin.call(admin.users.DeleteUser, delete_user))
    assert code == grpc.StatusCode.NOT_FOUND
    # The name is free again.
    again = users_pb2.CreateUserRequest(username=user.user.username, password=PASSWORD)
    assert admin.call(admin.users.CreateUser, again).user.id != user.user.id
