"""Bad input gets a clear status before any work starts, and nothing touches the disk."""

from __future__ import annotations

import tomllib

import grpc
import pytest

from darb.executor.v1 import executor_pb2 as pb
from tests.executor.helpers import create, new_id

BAD_SPECS = [
    "--help",
    "-c",
    "--manifest-path=/etc",
    "acme-core\nacme-extras",
    "acme-core\r",
    "acme\x00core",
    "numpy; rm -rf /",
    "../../etc/passwd",
    "",
    "acme-core >>=1",
    "conda-forge::acme-core",
    "acme-core[channel=evil]",
    "https://example.invalid/noarch/acme-core-1.0-h0_0.tar.bz2",
    "x" * 300,
]


def _create_status(agent, **fields) -> grpc.StatusCode:
    request = pb.CreateEnvironmentRequest(**{"environment_id": new_id(), "name": "demo", **fields})
    with pytest.raises(grpc.RpcError) as error:
        list(agent.stub().CreateEnvironment(request, metadata=agent.metadata))
    return error.value.code(), error.value.details()


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_specs_are_invalid_argument_on_create_and_install(shared_agent, spec):
    code, details = _create_status(shared_agent, packages=[spec])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    environment_id, _ = create(shared_agent, "acme-core")
    request = pb.InstallPackagesRequest(environment_id=environment_id, packages=[spec])
    with pytest.raises(grpc.RpcError) as error:
        list(shared_agent.stub().InstallPackages(request, metadata=shared_agent.metadata))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "channel",
    ["conda-forge", "file:///etc", "file:///tmp/../etc", "--channel=x", "https://evil.invalid/c"],
)
def test_channels_outside_the_allowlist_are_invalid_argument(shared_agent, channel):
    code, details = _create_status(shared_agent, channels=[channel], packages=["acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "channel" in details


def test_a_channel_inside_the_allowlist_prefix_but_escaping_it_is_refused(
    shared_agent, channel_url
):
    code, _ = _create_status(shared_agent, channels=[channel_url + "-evil"], packages=["acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _create_status(shared_agent, packages=[f"{channel_url}/../x::acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("platforms", "expected"),
    [
        (["linux-128"], "'linux-128' is not one of"),
        (["noarch"], "'noarch' is not one of"),
        (["freebsd-64"], "'freebsd-64' is not one of"),
        (["osx-arm64", "osx-arm64"], "must not repeat"),
        (
            [f"{os}-{arch}" for os in ("linux", "osx") for arch in ("64", "arm64")]
            + ["win-64", "win-32", "win-arm64", "zos-z", "linux-s390x"],
            "limit is 8",
        ),
    ],
)
def test_bad_platforms_are_invalid_argument(shared_agent, platforms, expected):
    code, details = _create_status(shared_agent, platforms=platforms, packages=["acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details


@pytest.mark.parametrize(
    "environment_id",
    [
        "",
        "../../etc",
        "abc",
        "00000000-0000-0000-0000-00000000000G",
        "/tmp/x",
        "ABCDEF00-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-000000000000/..",
    ],
)
def test_ids_not_of_the_agent_format_are_invalid_argument(shared_agent, environment_id):
    code, _ = _create_status(shared_agent, environment_id=environment_id, packages=["acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    request = pb.ListPackagesRequest(environment_id=environment_id)
    with pytest.raises(grpc.RpcError) as error:
        shared_agent.stub().ListPackages(request, metadata=shared_agent.metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["", "../etc", "Upper", "-flag", "a" * 65, "a b", "a\nb"])
def test_bad_display_names_are_invalid_argument(shared_agent, name):
    code, _ = _create_status(shared_agent, name=name, packages=["acme-core"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_empty_package_lists_are_invalid_argument_for_install_and_remove(shared_agent):
    environment_id, _ = create(shared_agent, "acme-core")
    stub, metadata = shared_agent.stub(), shared_agent.metadata
    for call in (
        lambda: list(
            stub.InstallPackages(
                pb.InstallPackagesRequest(environment_id=environment_id), metadata=metadata
            )
        ),
        lambda: list(
            stub.RemovePackages(
                pb.RemovePackagesRequest(environment_id=environment_id), metadata=metadata
            )
        ),
        lambda: list(
            stub.RemovePackages(
                pb.RemovePackagesRequest(environment_id=environment_id, packages=["--all"]),
                metadata=metadata,
            )
        ),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_refused_requests_write_nothing(shared_agent):
    before = sorted(p.name for p in (shared_agent.data_dir / "environments").iterdir())
    for spec in BAD_SPECS:
        _create_status(shared_agent, packages=[spec])
    after = sorted(p.name for p in (shared_agent.data_dir / "environments").iterdir())
    assert after == before


def test_default_channels_apply_when_a_request_names_none(shared_agent, channel_url):
    _, outcome = create(shared_agent, "acme-core")
    assert outcome.result.success
    assert tomllib.loads(outcome.result.manifest)["workspace"]["channels"] == [channel_url]


def test_cli_engine_without_pixi_is_failed_precondition(agent_factory):
    agent = agent_factory(DARB_PIXI_ENGINE="cli", PATH="/nonexistent")
    with pytest.raises(grpc.RpcError) as error:
        create(agent, "acme-core")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pixi" in error.value.details()
