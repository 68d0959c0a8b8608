"""Generated bad input for every agent RPC: only the expected statuses, a healthy agent
afterwards, and nothing written outside ``$DARB_DATA_DIR/environments/<id>``.

Strategies mix hostile text (paths, flags, shell, control characters, other channels,
huge values) with a few valid values, so some requests really run; those stay cheap
(empty or one small package). The last tests pin the crashes these properties found.
"""

from __future__ import annotations

import os
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darb.executor.v1 import executor_pb2 as pb
from darb.executor.v1 import executor_pb2_grpc
from services.executor.workspace import is_environment_id
from shared.config import ConfigError, ExecutorSettings
from testkit.agent import AgentProcess
from tests.executor.helpers import create

ACCEPTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
# Left alone by the containment check: the agent's shared caches and scratch space.
SCRATCH = ("pkgs", "repodata", "run", "trash")
CHANNEL = "{channel}"  # replaced by the fixture channel's URL when a request is built
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

HOSTILE = [
    "",
    " ",
    "../../etc",
    "/etc/passwd",
    "~/.ssh",
    "--manifest-path=/etc",
    "--help",
    "-c",
    "numpy; rm -rf /",
    "$(touch /tmp/darb-pwned)",
    "`id`",
    "acme\x00core",
    "acme-core\n",
    "acme-core\nacme-extras",
    "\u202eacme-core",
    "\uff41\uff43\uff4d\uff45",  # full-width "acme"
    "conda-forge::acme-core",
    "https://example.invalid/c::acme-core",
    "file:///etc::acme-core",
    f"{CHANNEL}/../x::acme-core",
    f"{CHANNEL}/%2e%2e/x::acme-core",
    'acme-core[url="file:///etc/x-1-0.tar.bz2"]',
    "acme-core[channel=evil]",
    "acme-core >>=1",
    "x" * 300,
    "a" * 100_000,
]
CHEAP_VALID_SPECS = ["acme-core", "acme-core >=1", "acme-core 1.0.*", "acme-missing"]
CHANNELS = [
    CHANNEL,
    f"{CHANNEL}/",
    f"{CHANNEL}-evil",
    f"{CHANNEL}/../etc",
    f"{CHANNEL}/%2e%2e/etc",
    f"{CHANNEL}?x=1",
    "conda-forge",
    "file:///etc",
    "http://[::1",
    "ftp://example.invalid/c",
    "--channel=x",
    "a/b/c/d/e",
]
VALID_NAMES = ["demo", "env-1", "a" * 64]
BAD_NAMES = ["a" * 65, "Upper", "-flag", "a b", "demo\n", "../x"]

hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
hostile_packages = st.one_of(
    st.lists(st.one_of(hostile_text, st.sampled_from(CHEAP_VALID_SPECS)), min_size=1, max_size=4),
    st.just([]),
    st.integers(201, 5000).map(lambda n: ["acme-core"] * n),
    st.just(["a" * (5 * 1024 * 1024)]),  # over the 4 MiB message limit
)
hostile_channels = st.lists(
    st.one_of(st.sampled_from(CHANNELS), hostile_text), min_size=1, max_size=3
)
missing_ids = st.uuids().map(str)
malformed_ids = st.one_of(
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: f"{u}\n"),
    st.uuids().map(lambda u: f"{u}/.."),
    st.uuids().map(lambda u: f"../{u}"),
    hostile_text,
)
good_auth = st.just("good")
bad_auth = st.sampled_from(["none", "wrong", "no-bearer", "longer"])


class Request:
    """Draws each field valid, or hostile when it is the one under attack ("all": every
    field). Attacking one field at a time lets bad values reach the checks that run after
    the first field's, which all-random requests almost never do."""

    def __init__(self, data: st.DataObject, attacked: str) -> None:
        self._data = data
        self._attacked = attacked

    def field(self, name: str, valid: st.SearchStrategy, hostile: st.SearchStrategy) -> Any:
        chosen = hostile if self._attacked in (name, "all") else valid
        return self._data.draw(chosen, label=name)

    def auth(self) -> str:
        return self.field("auth", good_auth, bad_auth)


def metadata_for(agent: AgentProcess, kind: str) -> tuple[tuple[str, str], ...]:
    header = {
        "good": f"Bearer {agent.token}",
        "wrong": "Bearer wrong",
        "no-bearer": agent.token,
        "longer": f"Bearer {agent.token}x",
    }.get(kind)
    return (("authorization", header),) if header else ()


def with_channel(values: list[str], channel_url: str) -> list[str]:
    return [value.replace(CHANNEL, channel_url) for value in values]


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """Run a call to its end; its status, which must be one a caller can act on."""
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in ACCEPTED, (error.code(), error.details())
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def run_stream(
    stub: executor_pb2_grpc.ExecutorServiceStub,
    agent: AgentProcess,
    method: str,
    request: object,
    kind: str,
) -> None:
    metadata = metadata_for(agent, kind)
    status_of(lambda: list(getattr(stub, method)(request, metadata=metadata, timeout=60)))


def paths_outside_environments(agent: AgentProcess, tmp_root: Path) -> dict[str, object]:
    """Every path under the test's temp root, with size and mtime for files, except
    environment contents, their fencing tokens (kept per environment id, even for a
    refused request: see services/executor/fencing.py), the caches and the agent's own
    log (which grows)."""
    data, log = agent.data_dir, agent.log_path
    skipped = {data / "environments", data / "fences", *(data / name for name in SCRATCH)}
    found: dict[str, object] = {}
    for root, dirs, files in os.walk(tmp_root):
        dirs[:] = [d for d in dirs if Path(root, d) not in skipped]
        for name in dirs:
            found[str(Path(root, name))] = "dir"
        for name in files:
            path = Path(root, name)
            status = path.lstat()
            found[str(path)] = "log" if path == log else (status.st_size, status.st_mtime_ns)
    return found


def assert_healthy(agent: AgentProcess) -> None:
    with grpc.insecure_channel(agent.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    info = agent.stub().GetInfo(pb.GetInfoRequest(), metadata=agent.metadata, timeout=30)
    assert info.engine == "builtin"
    _, outcome = create(agent, "acme-core")
    assert outcome.result.success, outcome.result.error


@pytest.fixture
def contained_and_healthy(
    shared_agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Around each property: nothing new outside environments/<id>, agent healthy after."""
    tmp_root = tmp_path_factory.getbasetemp()
    before = paths_outside_environments(shared_agent, tmp_root)
    log_start = len(shared_agent.log_text())
    yield
    assert paths_outside_environments(shared_agent, tmp_root) == before
    entries = list((shared_agent.data_dir / "environments").iterdir())
    assert all(is_environment_id(entry.name) and entry.is_dir() for entry in entries), entries
    fences = shared_agent.data_dir / "fences"
    tokens = list(fences.iterdir()) if fences.exists() else []
    assert all(
        is_environment_id(entry.name.removesuffix(".lock")) and entry.is_file() for entry in tokens
    ), tokens
    assert shared_agent.process.poll() is None, shared_agent.log_text()[-3000:]
    assert_healthy(shared_agent)
    assert "unexpected error" not in shared_agent.log_text()[log_start:]


contained = pytest.mark.usefixtures("contained_and_healthy")


@pytest.fixture(scope="module")
def stub(shared_agent: AgentProcess) -> executor_pb2_grpc.ExecutorServiceStub:
    """One channel for all the examples (``AgentProcess.stub()`` opens a new one each time)."""
    return shared_agent.stub()


@pytest.fixture(scope="module")
def pool(shared_agent: AgentProcess) -> list[str]:
    """Environments the properties install into, remove from and list."""
    return [create(shared_agent, "acme-core")[0] for _ in range(2)]


@contained
@PROPERTY
@given(kind=st.one_of(good_auth, bad_auth))
def test_get_info_answers_or_refuses_the_caller(shared_agent, stub, kind):
    metadata = metadata_for(shared_agent, kind)
    status = status_of(lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=30))
    assert status == (grpc.StatusCode.OK if kind == "good" else grpc.StatusCode.UNAUTHENTICATED)


@contained
@PROPERTY
@given(
    key=st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=20).filter(
        lambda key: not key.endswith("-bin")  # binary headers take bytes
    ),
    value=st.text(string.printable.strip(), max_size=200),
)
def test_unknown_metadata_does_not_disturb_get_info(shared_agent, stub, key, value):
    metadata = (*shared_agent.metadata, (f"x-{key}", value))
    info = stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=30)
    assert info.engine == "builtin"


@pytest.mark.parametrize(
    "attacked", ["environment_id", "name", "channels", "packages", "auth", "all"]
)
@contained
@PROPERTY
@given(data=st.data())
def test_create_answers_bad_input_with_a_clear_status(
    shared_agent, stub, channel_url, pool, data, attacked
):
    draw = Request(data, attacked)
    existing = st.sampled_from(pool)
    request = pb.CreateEnvironmentRequest(
        environment_id=draw.field(
            "environment_id", missing_ids, st.one_of(existing, malformed_ids)
        ),
        name=draw.field(
            "name",
            st.sampled_from(VALID_NAMES),
            st.one_of(st.sampled_from(BAD_NAMES), hostile_text),
        ),
        channels=with_channel(
            draw.field("channels", st.sampled_from([[], [CHANNEL]]), hostile_channels), channel_url
        ),
        packages=with_channel(
            draw.field("packages", st.sampled_from([[], ["acme-core"]]), hostile_packages),
            channel_url,
        ),
    )
    run_stream(stub, shared_agent, "CreateEnvironment", request, draw.auth())


@pytest.mark.parametrize("attacked", ["environment_id", "packages", "auth", "all"])
@contained
@PROPERTY
@given(data=st.data())
def test_install_answers_bad_input_with_a_clear_status(
    shared_agent, stub, channel_url, pool, data, attacked
):
    draw = Request(data, attacked)
    specs = st.sampled_from(CHEAP_VALID_SPECS).map(lambda spec: [spec])
    request = pb.InstallPackagesRequest(
        environment_id=draw.field(
            "environment_id", st.sampled_from(pool), st.one_of(missing_ids, malformed_ids)
        ),
        packages=with_channel(draw.field("packages", specs, hostile_packages), channel_url),
    )
    run_stream(stub, shared_agent, "InstallPackages", request, draw.auth())


@pytest.mark.parametrize("attacked", ["environment_id", "packages", "auth", "all"])
@contained
@PROPERTY
@given(data=st.data())
def test_remove_answers_bad_input_with_a_clear_status(shared_agent, stub, pool, data, attacked):
    draw = Request(data, attacked)
    names = st.sampled_from(["acme-core", "acme-utils", "ACME-CORE"]).map(lambda name: [name])
    request = pb.RemovePackagesRequest(
        environment_id=draw.field(
            "environment_id", st.sampled_from(pool), st.one_of(missing_ids, malformed_ids)
        ),
        packages=draw.field("packages", names, hostile_packages),
    )
    run_stream(stub, shared_agent, "RemovePackages", request, draw.auth())


@pytest.mark.parametrize("attacked", ["environment_id", "auth"])
@contained
@PROPERTY
@given(data=st.data())
def test_list_answers_bad_input_with_a_clear_status(shared_agent, stub, pool, data, attacked):
    draw = Request(data, attacked)
    request = pb.ListPackagesRequest(
        environment_id=draw.field(
            "environment_id", st.sampled_from(pool), st.one_of(missing_ids, malformed_ids)
        )
    )
    metadata = metadata_for(shared_agent, draw.auth())
    status_of(lambda: stub.ListPackages(request, metadata=metadata, timeout=30))


@pytest.mark.parametrize("attacked", ["environment_id", "auth"])
@contained
@PROPERTY
@given(data=st.data())
def test_delete_answers_bad_input_with_a_clear_status(shared_agent, stub, data, attacked):
    """The valid case deletes an empty environment made for it, which is cheap."""
    draw = Request(data, attacked)
    environment_id = draw.field("environment_id", st.none(), st.one_of(missing_ids, malformed_ids))
    request = pb.DeleteEnvironmentRequest(environment_id=environment_id or create(shared_agent)[0])
    run_stream(stub, shared_agent, "DeleteEnvironment", request, draw.auth())


# Regression tests for what the properties found, and the request limits.


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_an_id_with_a_trailing_newline_is_refused_and_creates_nothing(shared_agent, stub):
    """``$`` matched before a final newline, so ``<uuid>\\n`` passed and became a directory."""
    environment_id = f"{uuid.uuid4()}\n"
    request = pb.CreateEnvironmentRequest(environment_id=environment_id, name="demo")
    error = refusal(lambda: list(stub.CreateEnvironment(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (shared_agent.data_dir / "environments" / environment_id).exists()


def test_a_name_with_a_trailing_newline_is_refused(shared_agent, stub):
    request = pb.CreateEnvironmentRequest(environment_id=str(uuid.uuid4()), name="demo\n")
    error = refusal(lambda: list(stub.CreateEnvironment(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "channel",
    ["http://[::1", "{channel}/%2e%2e/x", "{channel}/%2E%2E", "{channel}/a/%2e%2e/%2e%2e/x"],
    ids=["unclosed-ipv6", "encoded-dotdot", "encoded-upper", "encoded-nested"],
)
def test_malformed_or_percent_encoded_escaping_channels_are_invalid_argument(
    shared_agent, stub, channel_url, channel
):
    """An unclosed IPv6 URL was INTERNAL; ``%2e%2e`` passed the allowlist and rattler
    then decoded it into a path outside the allowed channel."""
    request = pb.CreateEnvironmentRequest(
        environment_id=str(uuid.uuid4()),
        name="demo",
        channels=[channel.replace(CHANNEL, channel_url)],
    )
    error = refusal(lambda: list(stub.CreateEnvironment(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channel" in error.details()


@pytest.mark.parametrize(
    "method, request_type",
    [
        ("CreateEnvironment", pb.CreateEnvironmentRequest),
        ("InstallPackages", pb.InstallPackagesRequest),
        ("RemovePackages", pb.RemovePackagesRequest),
    ],
)
def test_more_packages_than_the_limit_is_resource_exhausted_naming_it(
    shared_agent, stub, pool, method, request_type
):
    fields = {"name": "demo"} if method == "CreateEnvironment" else {}
    environment_id = str(uuid.uuid4()) if method == "CreateEnvironment" else pool[0]
    request = request_type(
        environment_id=environment_id, packages=[f"pkg-{i}" for i in range(201)], **fields
    )
    call = getattr(stub, method)
    error = refusal(lambda: list(call(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "200" in error.details()
    assert "DARB_MAX_PACKAGES_PER_REQUEST" in error.details()
    at_limit = [f"pkg-{i}" for i in range(199)] + ["--flag"]
    request = request_type(environment_id=environment_id, packages=at_limit, **fields)
    error = refusal(lambda: list(call(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # judged, not refused for size


def test_more_channels_than_the_limit_is_resource_exhausted(shared_agent, stub, channel_url):
    request = pb.CreateEnvironmentRequest(
        environment_id=str(uuid.uuid4()), name="demo", channels=[channel_url] * 10_000
    )
    error = refusal(lambda: list(stub.CreateEnvironment(request, metadata=shared_agent.metadata)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 32" in error.details()


def test_the_limits_are_settings(agent_factory):
    agent = agent_factory(DARB_MAX_PACKAGES_PER_REQUEST="2", DARB_MAX_MESSAGE_BYTES="65536")
    stub = agent.stub()
    request = pb.InstallPackagesRequest(environment_id=str(uuid.uuid4()), packages=["a", "b", "c"])
    error = refusal(lambda: list(stub.InstallPackages(request, metadata=agent.metadata)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 2" in error.details()
    big = pb.InstallPackagesRequest(environment_id=str(uuid.uuid4()), packages=["a" * 70_000])
    error = refusal(lambda: list(stub.InstallPackages(big, metadata=agent.metadata)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetInfo(pb.GetInfoRequest(), metadata=agent.metadata).engine == "builtin"


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"DARB_MAX_PACKAGES_PER_REQUEST": "0"}, "at least 1"),
        ({"DARB_MAX_PACKAGES_PER_REQUEST": "many"}, "must be a number"),
        ({"DARB_MAX_MESSAGE_BYTES": "10"}, "at least 1024"),
    ],
)
def test_limit_settings_are_checked_at_start(tmp_path, env, problem):
    defaults = ExecutorSettings.from_env({"DARB_DATA_DIR": str(tmp_path)})
    assert (defaults.max_packages_per_request, defaults.max_message_bytes) == (200, 4 << 20)
    with pytest.raises(ConfigError, match=problem):
        ExecutorSettings.from_env({"DARB_DATA_DIR": str(tmp_path), **env})
