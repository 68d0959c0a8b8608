"""The agent's operations end to end: real process, real gRPC, real solves and installs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import grpc
import jsonschema
import pytest

from darb.executor.v1 import executor_pb2 as pb
from testkit.kit import PIXI_SCHEMA
from tests.executor.helpers import call, create, new_id, prefix_versions, workspace_dir


def test_get_info_describes_the_agent(shared_agent):
    info = shared_agent.stub().GetInfo(pb.GetInfoRequest(), metadata=shared_agent.metadata)
    assert info.platform == "linux-64"
    assert info.engine == "builtin"
    assert "builtin" in info.engines
    assert info.version and info.agent_id


def test_create_installs_the_dependency_chain_and_says_what_it_does(shared_agent, channel_url):
    environment_id, outcome = create(shared_agent, "acme-extras")
    assert outcome.result.success, outcome.result.error
    assert outcome.versions() == {"acme-core": "1.1", "acme-utils": "1.0", "acme-extras": "1.0"}
    log = outcome.text
    assert "acme-extras" in log and channel_url in log  # specs and channels
    for name in ("acme-core", "acme-utils", "acme-extras"):
        assert any(name in line.text and "link" in line.text.lower() for line in outcome.lines)
    assert "pixi.lock" in log and "pixi.toml" in log  # files written
    assert {line.stream for line in outcome.lines} <= {pb.LOG_STREAM_STDOUT, pb.LOG_STREAM_STDERR}
    assert all(line.time.seconds > 0 for line in outcome.lines)
    root = workspace_dir(shared_agent, environment_id)
    assert prefix_versions(root / ".pixi" / "envs" / "default") == outcome.versions()
    assert outcome.result.manifest == (root / "pixi.toml").read_text()
    assert outcome.result.lockfile == (root / "pixi.lock").read_text()
    assert all(p.channel.startswith(channel_url) for p in outcome.result.packages)


def test_manifest_is_a_valid_pixi_manifest(shared_agent, channel_url):
    _, outcome = create(shared_agent, "acme-core >=1.0,<2", "acme-tool")
    manifest = tomllib.loads(outcome.result.manifest)
    jsonschema.validate(manifest, json.loads(PIXI_SCHEMA.read_text()))
    assert manifest["workspace"]["channels"] == [channel_url]
    assert manifest["workspace"]["platforms"] == ["linux-64"]
    assert set(manifest["dependencies"]) == {"acme-core", "acme-tool"}


def test_install_upgrades_and_downgrades_then_remove_drops(shared_agent):
    environment_id, _ = create(shared_agent, "acme-core ==1.0")
    upgraded = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-core ==2.0"]
    )
    assert upgraded.result.success, upgraded.result.error
    assert upgraded.versions() == {"acme-core": "2.0"}
    downgraded = call(
        shared_agent,
        "InstallPackages",
        environment_id=environment_id,
        packages=["acme-core ==1.1", "acme-utils"],
    )
    assert downgraded.versions() == {"acme-core": "1.1", "acme-utils": "1.0"}
    removed = call(
        shared_agent, "RemovePackages", environment_id=environment_id, packages=["acme-utils"]
    )
    assert removed.result.success, removed.result.error
    assert removed.versions() == {"acme-core": "1.1"}
    prefix = workspace_dir(shared_agent, environment_id) / ".pixi" / "envs" / "default"
    assert prefix_versions(prefix) == {"acme-core": "1.1"}
    listed = shared_agent.stub().ListPackages(
        pb.ListPackagesRequest(environment_id=environment_id), metadata=shared_agent.metadata
    )
    assert {(p.name, p.version) for p in listed.packages} == {("acme-core", "1.1")}


def test_unsolvable_request_fails_with_the_solver_explanation_and_changes_nothing(shared_agent):
    environment_id, created = create(shared_agent, "acme-core ==1.0")
    root = workspace_dir(shared_agent, environment_id)
    before = (root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()
    outcome = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-broken"]
    )
    assert not outcome.result.success
    assert "does-not-exist" in outcome.result.error
    assert outcome.versions() == created.versions()
    assert ((root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()) == before
    assert prefix_versions(root / ".pixi" / "envs" / "default") == {"acme-core": "1.0"}


def test_failed_create_leaves_no_environment(shared_agent):
    environment_id, outcome = create(shared_agent, "acme-broken")
    assert not outcome.result.success and "does-not-exist" in outcome.result.error
    assert not workspace_dir(shared_agent, environment_id).exists()
    assert outcome.result.manifest == "" and not outcome.result.packages
    _, retry = create(shared_agent, "acme-core", environment_id=environment_id)
    assert retry.result.success, retry.result.error


def test_delete_removes_the_workspace_and_then_it_is_not_found(shared_agent):
    environment_id, _ = create(shared_agent, "acme-utils")
    outcome = call(shared_agent, "DeleteEnvironment", environment_id=environment_id)
    assert outcome.result.success, outcome.result.error
    assert "acme-utils" in outcome.text
    assert not workspace_dir(shared_agent, environment_id).exists()
    assert not list((shared_agent.data_dir / "trash").iterdir())
    with pytest.raises(grpc.RpcError) as error:
        shared_agent.stub().ListPackages(
            pb.ListPackagesRequest(environment_id=environment_id), metadata=shared_agent.metadata
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_second_environment_hard_links_from_the_shared_cache(shared_agent):
    first, _ = create(shared_agent, "acme-tool", "acme-core ==2.0")
    second, _ = create(shared_agent, "acme-core ==2.0")
    relative = Path(".pixi/envs/default/share/acme-core/VERSION")
    one = (workspace_dir(shared_agent, first) / relative).stat()
    two = (workspace_dir(shared_agent, second) / relative).stat()
    assert one.st_ino == two.st_ino and one.st_nlink >= 3


def test_create_of_an_existing_id_is_already_exists(shared_agent):
    environment_id, _ = create(shared_agent, "acme-core")
    with pytest.raises(grpc.RpcError) as error:
        create(shared_agent, "acme-core", environment_id=environment_id)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_operations_on_an_unknown_environment_are_not_found(shared_agent):
    stub, unknown = shared_agent.stub(), new_id()
    for method, request in (
        (
            "InstallPackages",
            pb.InstallPackagesRequest(environment_id=unknown, packages=["acme-core"]),
        ),
        (
            "RemovePackages",
            pb.RemovePackagesRequest(environment_id=unknown, packages=["acme-core"]),
        ),
        ("DeleteEnvironment", pb.DeleteEnvironmentRequest(environment_id=unknown)),
    ):
        with pytest.raises(grpc.RpcError) as error:
            list(getattr(stub, method)(request, metadata=shared_agent.metadata))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND, method


def test_removing_a_package_that_is_no_dependency_is_not_found(shared_agent):
    environment_id, _ = create(shared_agent, "acme-utils")
    with pytest.raises(grpc.RpcError) as error:
        call(shared_agent, "RemovePackages", environment_id=environment_id, packages=["acme-core"])
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "acme-core" in error.value.details()
