"""An INVALID_ARGUMENT names the request field it refuses (AIP-193): its status details
(the ``grpc-status-details-bin`` trailer) hold one google.rpc.BadRequest whose
FieldViolation has the field's path and the call's message, which stays as it was. Read
here as any client would, with grpc_status.rpc_status.from_call, over a real control
plane; a refusal of no field in particular carries no details."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from darb.v1 import common_pb2, environments_pb2, jobs_pb2, users_pb2
from shared.validation import NAME_RULE
from testkit.control_plane import ApiProcess, Client

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MANIFEST = (
    '[workspace]\nname = "x"\nchannels = []\nplatforms = []\n[dependencies]\nacme-core = "*"\n'
)


@pytest.fixture(scope="module")
def user(api: ApiProcess) -> Client:
    return api.new_user()


@pytest.fixture(scope="module")
def environment_id(user: Client) -> Iterator[str]:
    created = user.create(f"fields-{uuid.uuid4().hex[:8]}", ["acme-core"])
    yield created.environment.id
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED


def _refusal(call: Callable[[], object]) -> tuple[grpc.RpcError, status_pb2.Status | None]:
    """The call's error and its rich status (None without one)."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value, rpc_status.from_call(raised.value)


def _field_refused(call: Callable[[], object]) -> tuple[str, str]:
    """(the one field an INVALID_ARGUMENT's BadRequest names, the call's message),
    checked: the code, one BadRequest with one violation whose description is the
    message the call ended with."""
    error, status = _refusal(call)
    assert error.code() == INVALID, error.details()
    assert status is not None, f"no status details: {error.details()}"
    assert status.code == INVALID.value[0] and status.message == error.details()
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request), detail.type_url
    [violation] = bad_request.field_violations
    assert violation.description == error.details()
    return violation.field, error.details()


def _create(user: Client, **fields: object) -> Callable[[], object]:
    request = environments_pb2.CreateEnvironmentRequest(**{"name": "ok", **fields})
    return lambda: user.call(user.envs.CreateEnvironment, request)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"name": "Not<Valid>", "packages": ["acme-core"]},
            "name",
            f"environment name 'Not<Valid>' must be {NAME_RULE}",
        ),
        (
            {"packages": ["acme-core"], "channels": ["https://evil.example/channel"]},
            "channels",
            "channel 'https://evil.example/channel' is not allowed (see DARB_ALLOWED_CHANNELS)",
        ),
        ({"packages": ["acme-core", "acme core ==="]}, "packages", "package spec 'acme core ==='"),
        ({"packages": []}, "packages", "at least one package spec is required"),
        (
            {"packages": ["acme-core"], "platforms": ["no-such-platform"]},
            "platforms",
            "platform 'no-such-platform' is not one of: ",
        ),
        (
            {"packages": ["acme-core"], "package_manager": "conda"},
            "package_manager",
            "package_manager 'conda'",
        ),
        ({"manifest": "[workspace\n"}, "manifest", "pixi.toml is not valid TOML: "),
        (
            {"manifest": '[workspace]\nchannels = ["https://evil.example/c"]\n'},
            "manifest",
            "channel 'https://evil.example/c' is not allowed",
        ),
        ({"lockfile": "version: 6\n"}, "manifest", "a lockfile needs its manifest (pixi.toml)"),
        (
            {"manifest": MANIFEST, "lockfile": "version: 6\n"},
            "lockfile",
            "pixi.lock cannot be read: ",
        ),
        (
            {"manifest": MANIFEST, "environment_yml": "x: 1\n"},
            "manifest",
            "give manifest or environment_yml, not both",
        ),
        (
            {"environment_yml": "dependencies: [\n"},
            "environment_yml",
            "environment.yml is not valid YAML: ",
        ),
        (
            {"manifest": MANIFEST, "platforms": ["no-such-platform"]},
            "platforms",
            "platform 'no-such-platform'",
        ),
        (
            {"manifest": MANIFEST, "packages": ["acme-tool"]},
            "packages",
            "an imported environment takes its packages and channels from the file",
        ),
    ],
)
def test_create_names_the_field_it_refuses(
    user: Client, fields: dict[str, object], field: str, message: str
) -> None:
    refused, details = _field_refused(_create(user, **fields))
    assert refused == field
    assert details.startswith(message), details


def test_package_changes_name_packages(user: Client, environment_id: str) -> None:
    install = environments_pb2.InstallPackagesRequest(
        environment_id=environment_id, packages=["acme core ==="]
    )
    field, message = _field_refused(lambda: user.call(user.envs.InstallPackages, install))
    assert field == "packages"
    assert message.startswith("package spec 'acme core ===' is not a valid match spec")
    remove = environments_pb2.RemovePackagesRequest(
        environment_id=environment_id, packages=["Not A Name"]
    )
    field, message = _field_refused(lambda: user.call(user.envs.RemovePackages, remove))
    assert (field, message) == (
        "packages",
        "package name 'Not A Name' is not a valid conda package name",
    )
    bad_id = environments_pb2.InstallPackagesRequest(environment_id="nope", packages=["x"])
    field, message = _field_refused(lambda: user.call(user.envs.InstallPackages, bad_id))
    assert (field, message) == ("environment_id", "environment_id 'nope' is not a UUID")


@pytest.mark.parametrize(
    ("request_fields", "field", "message"),
    [
        ({"filter": "name ="}, "filter", "filter: expected "),
        ({"filter": "colour = red"}, "filter", "filter: "),
        ({"page_token": "not-a-token"}, "page_token", "page_token is not valid"),
        ({"page_size": -1}, "page_size", "page_size must not be negative"),
    ],
)
def test_list_names_the_field_it_refuses(
    user: Client, request_fields: dict[str, object], field: str, message: str
) -> None:
    request = environments_pb2.ListEnvironmentsRequest(**request_fields)
    refused, details = _field_refused(lambda: user.call(user.envs.ListEnvironments, request))
    assert refused == field
    assert details.startswith(message), details


def test_a_stream_names_the_field_it_refuses(user: Client) -> None:
    """WatchJob goes through the streaming wrapper, which answers the same way."""
    request = jobs_pb2.WatchJobRequest(id=str(uuid.uuid4()), after_seq=-1)
    field, message = _field_refused(
        lambda: list(user.jobs.WatchJob(request, metadata=user.metadata, timeout=30))
    )
    assert (field, message) == ("after_seq", "after_seq must not be negative")


def test_other_refusals_carry_no_details(api: ApiProcess, user: Client) -> None:
    """NOT_FOUND, and an INVALID_ARGUMENT of no field in particular, stay plain."""
    missing = environments_pb2.GetEnvironmentRequest(id=str(uuid.uuid4()))
    error, status = _refusal(lambda: user.call(user.envs.GetEnvironment, missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND and status is None
    admin = api.admin()
    weak = users_pb2.CreateUserRequest(username=f"u{uuid.uuid4().hex[:12]}", password="x")
    error, status = _refusal(lambda: admin.call(admin.users.CreateUser, weak))
    assert error.code() == INVALID and "password" in error.details() and status is None
