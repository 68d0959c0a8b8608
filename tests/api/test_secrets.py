"""Passwords and tokens never appear in the control plane's log or in error messages."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import grpc

from darb.v1 import auth_pb2, users_pb2
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess
from testkit.postgres import fresh_database


def _secret() -> str:
    return f"s3cret-{secrets.token_hex(8)}"


def test_secrets_stay_out_of_logs_and_errors(api_factory: Callable[..., ApiProcess]) -> None:
    password, new_password, wrong, bad_token = _secret(), _secret(), _secret(), _secret()
    short_password = secrets.token_hex(3) + "!"
    details: list[str] = []

    def refused(call: Callable[[], object]) -> None:
        try:
            call()
        except grpc.RpcError as exc:
            details.append(exc.details() or "")
        else:
            raise AssertionError("the call should have been refused")

    with fresh_database() as url:
        api = api_factory(url)
        admin = api.admin()
        name = f"s{secrets.token_hex(6)}"
        create = users_pb2.CreateUserRequest(username=name, password=password)
        user_id = admin.call(admin.users.CreateUser, create).user.id
        token = api.login(name, password).token
        for username in (name, "admin", "nobody-here"):
            request = auth_pb2.LoginRequest(username=username, password=wrong)
            refused(lambda request=request: api.client().auth.Login(request))
        for header in (f"Bearer {bad_token}", f"Bearer {token}x", f"Basic {bad_token}", token):
            metadata = (("authorization", header),)
            refused(
                lambda metadata=metadata: api.client().users.GetCurrentUser(
                    users_pb2.GetCurrentUserRequest(), metadata=metadata
                )
            )
        short = users_pb2.CreateUserRequest(username=f"x{name}", password=short_password)
        refused(lambda: admin.call(admin.users.CreateUser, short))
        update = users_pb2.UpdateUserRequest(id=user_id, password=new_password)
        admin.call(admin.users.UpdateUser, update)
        api.stop()
        log = api.log_text()

    assert "created admin user" in log  # the right file, and it was written
    for secret in (password, new_password, wrong, bad_token, token, short_password, ADMIN_PASSWORD):
        assert secret not in log
        assert not any(secret in detail for detail in details)
