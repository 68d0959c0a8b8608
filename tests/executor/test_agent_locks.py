"""Locks for several platforms: real agents, real solves and installs from local
channels, locks read back with rattler."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
from rattler import LockFile

from shared.lockhash import content_hash
from testkit.agent import AgentProcess
from testkit.kit import PIXI_SCHEMA
from tests.executor.helpers import (
    Outcome,
    call,
    create,
    installed_builds,
    locked_builds,
    new_id,
    workspace_dir,
)

HOST = "linux-64"


def create_for(
    agent: AgentProcess, packages: list[str], platforms: list[str]
) -> tuple[str, Outcome]:
    environment_id = new_id()
    outcome = call(
        agent,
        "CreateEnvironment",
        environment_id=environment_id,
        name="demo",
        packages=packages,
        platforms=platforms,
    )
    return environment_id, outcome


def prefix_of(agent: AgentProcess, environment_id: str) -> Path:
    return workspace_dir(agent, environment_id) / ".pixi" / "envs" / "default"


def files_of(agent: AgentProcess, environment_id: str) -> tuple[str, str]:
    root = workspace_dir(agent, environment_id)
    return (root / "pixi.toml").read_text(), (root / "pixi.lock").read_text()


def assert_valid_manifest(text: str) -> dict[str, object]:
    manifest = tomllib.loads(text)
    jsonschema.validate(manifest, json.loads(PIXI_SCHEMA.read_text()))
    return manifest


def test_create_for_another_platform_locks_both_and_installs_the_hosts(shared_agent):
    environment_id, outcome = create_for(shared_agent, ["acme-native", "acme-utils"], ["osx-arm64"])
    assert outcome.result.success, outcome.result.error
    root = workspace_dir(shared_agent, environment_id)
    locked = locked_builds(root / "pixi.lock")
    assert set(locked) == {HOST, "osx-arm64"}
    assert ("acme-native", "1.0", "h0_0", HOST) in locked[HOST]
    assert ("acme-native", "1.0", "h0_0", "osx-arm64") in locked["osx-arm64"]
    assert {build[0] for build in locked["osx-arm64"]} == {"acme-native", "acme-utils", "acme-core"}
    assert installed_builds(prefix_of(shared_agent, environment_id)) == locked[HOST]
    assert sorted(p.name for p in outcome.result.packages) == sorted(b[0] for b in locked[HOST])
    manifest = assert_valid_manifest(outcome.result.manifest)
    assert manifest["workspace"]["platforms"] == [HOST, "osx-arm64"]  # type: ignore[index]
    lock = LockFile.from_path(root / "pixi.lock")
    assert outcome.result.content_hash == content_hash(lock)


def test_install_and_remove_solve_every_platform_of_the_manifest(shared_agent):
    environment_id, _ = create_for(shared_agent, ["acme-native"], ["osx-arm64", HOST])
    lockfile = workspace_dir(shared_agent, environment_id) / "pixi.lock"
    installed = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-core ==1.0"]
    )
    assert installed.result.success, installed.result.error
    for platform, builds in locked_builds(lockfile).items():
        assert ("acme-core", "1.0", "h0_0", "noarch") in builds, platform
    removed = call(
        shared_agent, "RemovePackages", environment_id=environment_id, packages=["acme-native"]
    )
    assert removed.result.success, removed.result.error
    assert {p: {b[0] for b in builds} for p, builds in locked_builds(lockfile).items()} == {
        HOST: {"acme-core"},
        "osx-arm64": {"acme-core"},
    }
    assert (
        installed_builds(prefix_of(shared_agent, environment_id)) == locked_builds(lockfile)[HOST]
    )


def test_a_spec_missing_on_one_platform_fails_naming_that_platform(shared_agent):
    _, host_only = create(shared_agent, "acme-linux-only")
    assert host_only.result.success, host_only.result.error
    environment_id, outcome = create_for(shared_agent, ["acme-linux-only"], ["osx-arm64"])
    assert not outcome.result.success
    assert outcome.result.error.startswith("cannot solve for osx-arm64: ")
    assert "acme-linux-only" in outcome.result.error
    assert not workspace_dir(shared_agent, environment_id).exists()

    environment_id, _ = create_for(shared_agent, ["acme-core"], ["osx-arm64"])
    before = files_of(shared_agent, environment_id)
    prefix = installed_builds(prefix_of(shared_agent, environment_id))
    failed = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-linux-only"]
    )
    assert failed.result.error.startswith("cannot solve for osx-arm64: ")
    assert files_of(shared_agent, environment_id) == before
    assert installed_builds(prefix_of(shared_agent, environment_id)) == prefix
