"""Locks for several platforms, and ApplyLock (rollback, import): real agents, real solves
and installs from local channels, locks read back with rattler."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import jsonschema
import pytest
from rattler import LockFile

from darb.executor.v1 import executor_pb2 as pb
from shared.lockhash import content_hash
from testkit.agent import AgentProcess, start_agent
from testkit.channel import PackageSpec, build_channel
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


def apply(
    agent: AgentProcess,
    environment_id: str,
    lockfile: str,
    packages: list[str],
    platforms: tuple[str, ...] = (HOST,),
) -> Outcome:
    return call(
        agent,
        "ApplyLock",
        environment_id=environment_id,
        name="demo",
        platforms=list(platforms),
        packages=packages,
        lockfile=lockfile,
    )


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


def test_apply_of_another_environments_lock_reproduces_its_builds(shared_agent):
    specs = ["acme-extras", "acme-native", "acme-tool"]
    source_id, source = create_for(shared_agent, specs, ["osx-arm64"])
    target_id = new_id()
    outcome = apply(shared_agent, target_id, source.result.lockfile, specs, (HOST, "osx-arm64"))
    assert outcome.result.success, outcome.result.error
    lockfile = workspace_dir(shared_agent, target_id) / "pixi.lock"
    assert lockfile.read_text() == source.result.lockfile
    installed = installed_builds(prefix_of(shared_agent, target_id))
    assert (
        installed
        == locked_builds(lockfile)[HOST]
        == installed_builds(prefix_of(shared_agent, source_id))
    )
    assert outcome.result.manifest == source.result.manifest
    assert_valid_manifest(outcome.result.manifest)
    assert outcome.result.content_hash == source.result.content_hash
    lines = outcome.text.splitlines()
    assert f"apply: {len(installed)} packages from the lock for {HOST}" in lines
    assert "  install   acme-native 1.0 h0_0" in lines
    assert not [line for line in lines if line.startswith(("solving", "solved"))]


def test_apply_of_an_older_lock_rolls_the_environment_back(shared_agent):
    specs = ["acme-core ==1.0", "acme-tool"]
    environment_id, first = create(shared_agent, *specs)
    prefix = prefix_of(shared_agent, environment_id)
    tool_meta = prefix / "conda-meta" / "acme-tool-1.0-h0_0.json"
    tool_stat = tool_meta.stat()
    upgraded = call(
        shared_agent, "InstallPackages", environment_id=environment_id, packages=["acme-core ==2.0"]
    )
    assert upgraded.versions()["acme-core"] == "2.0"

    rolled = apply(shared_agent, environment_id, first.result.lockfile, specs)
    assert rolled.result.success, rolled.result.error
    assert files_of(shared_agent, environment_id) == (first.result.manifest, first.result.lockfile)
    lockfile = workspace_dir(shared_agent, environment_id) / "pixi.lock"
    assert installed_builds(prefix) == locked_builds(lockfile)[HOST]
    assert (prefix / "share/acme-core/VERSION").read_text() == "1.0\n"
    assert "  downgrade acme-core 2.0 h0_0 -> 1.0 h0_0" in rolled.text.splitlines()
    assert (tool_meta.stat().st_ino, tool_meta.stat().st_mtime_ns) == (
        tool_stat.st_ino,
        tool_stat.st_mtime_ns,
    )
    assert not (workspace_dir(shared_agent, environment_id) / ".darb" / "dirty").exists()
    assert rolled.versions() == first.versions()


def test_apply_of_the_current_lock_rewrites_nothing_in_the_prefix(shared_agent):
    specs = ["acme-extras", "acme-tool"]
    environment_id, created = create(shared_agent, *specs)
    prefix = prefix_of(shared_agent, environment_id)

    def stats() -> dict[str, tuple[int, int]]:
        return {
            str(path.relative_to(prefix)): (path.lstat().st_ino, path.lstat().st_mtime_ns)
            for path in prefix.rglob("*")
        }

    before = stats()
    assert any(name.startswith("conda-meta/acme-extras") for name in before)
    outcome = apply(shared_agent, environment_id, created.result.lockfile, specs)
    assert outcome.result.success, outcome.result.error
    assert "solution: 4 packages, 0 to change" in outcome.text.splitlines()
    assert stats() == before


def _without_the_host(lockfile: str, tmp_path: Path) -> str:
    """The same lock holding only its osx-arm64 packages."""
    source, target = tmp_path / "source.lock", tmp_path / "target.lock"
    source.write_text(lockfile)
    lock = LockFile.from_path(source)
    environment = lock.environment("default")
    assert environment is not None
    [osx] = [platform for platform in lock.platforms() if platform.name == "osx-arm64"]
    smaller = LockFile([osx])
    for record in environment.conda_repodata_records_for_platform(osx) or []:
        smaller.add_conda_package("default", osx, record)
    smaller.to_path(target)
    return target.read_text()


PYPI = "https://files.pythonhosted.org/packages/requests-2.0-py3-none-any.whl"


def _with_pypi(lockfile: str) -> str:
    text = lockfile.replace(f"      {HOST}:\n", f"      {HOST}:\n      - pypi: {PYPI}\n", 1)
    return f"{text}- pypi: {PYPI}\n  name: requests\n  version: '2.0'\n"


def test_refused_locks_and_fields_are_invalid_argument_and_write_nothing(
    shared_agent, channel_url, tmp_path
):
    specs = ["acme-core"]
    _, source = create_for(shared_agent, specs, ["osx-arm64"])
    good = source.result.lockfile
    channel_path = urlsplit(channel_url).path
    cases = {
        "elsewhere": (
            {"lockfile": good.replace(channel_path, "/srv/elsewhere")},
            "allowed channel",
        ),
        "no host": ({"lockfile": _without_the_host(good, tmp_path)}, f"no platform {HOST}"),
        "no default": ({"lockfile": good.replace("  default:\n", "  other:\n")}, "'default'"),
        "pypi": ({"lockfile": _with_pypi(good)}, "not a conda package archive"),
        "not a lock": ({"lockfile": "version: ["}, "not a valid pixi.lock"),
        "empty": ({"lockfile": ""}, "not a valid pixi.lock"),
        "host missing": ({"platforms": ["osx-arm64"]}, f"include this agent's platform {HOST}"),
        "unknown platform": ({"platforms": [HOST, "linux-128"]}, "'linux-128' is not one of"),
        "too many": (
            {
                "platforms": [
                    HOST,
                    "osx-64",
                    "osx-arm64",
                    "win-64",
                    "win-32",
                    "win-arm64",
                    "linux-aarch64",
                    "linux-ppc64le",
                    "linux-s390x",
                ]
            },
            "limit is 8",
        ),
        "repeated": ({"platforms": [HOST, HOST]}, "must not repeat"),
        "name": ({"name": "Bad Name"}, "environment name"),
        "channel": ({"channels": ["https://evil.invalid/c"]}, "not allowed"),
        "spec": ({"packages": ["--help"]}, "package spec"),
        "id": ({"environment_id": "../x"}, "environment_id"),
    }
    before = sorted(p.name for p in (shared_agent.data_dir / "environments").iterdir())
    for case, (changes, expected) in cases.items():
        fields = {
            "environment_id": new_id(),
            "name": "demo",
            "platforms": [HOST, "osx-arm64"],
            "packages": specs,
            "lockfile": good,
            **changes,
        }
        with pytest.raises(grpc.RpcError) as error:
            list(
                shared_agent.stub().ApplyLock(
                    pb.ApplyLockRequest(**fields), metadata=shared_agent.metadata
                )
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert expected in error.value.details(), (case, error.value.details())
    after = sorted(p.name for p in (shared_agent.data_dir / "environments").iterdir())
    assert after == before
    assert not list((shared_agent.data_dir / "run").glob("*.lock"))
    accepted = apply(shared_agent, new_id(), good, specs, (HOST, "osx-arm64"))
    assert accepted.result.success, accepted.result.error


def test_an_apply_that_fails_midway_leaves_the_environment_as_it_was(tmp_path):
    """A lock whose archive has gone from the channel (and from the agent's cache): the
    install fails after the prefix was marked dirty."""
    channel_dir = tmp_path / "channel"
    url = build_channel(
        channel_dir,
        [
            PackageSpec(
                "acme-core", version, files={"share/acme-core/VERSION": f"{version}\n".encode()}
            )
            for version in ("1.0", "2.0")
        ],
    )
    with start_agent(tmp_path / "agent" / "data", url, token="t0ken") as agent:
        environment_id, first = create(agent, "acme-core ==1.0")
        _, newer = create(agent, "acme-core ==2.0")
        agent.evict_cached("acme-core")
        (channel_dir / "noarch" / "acme-core-2.0-h0_0.tar.bz2").unlink()
        prefix = prefix_of(agent, environment_id)
        before = installed_builds(prefix)

        failed = apply(agent, environment_id, newer.result.lockfile, ["acme-core ==2.0"])
        assert not failed.result.success
        assert failed.result.error.startswith("cannot install the packages: ")
        assert "restoring the environment to its pixi.lock" in failed.text
        assert files_of(agent, environment_id) == (first.result.manifest, first.result.lockfile)
        assert installed_builds(prefix) == before == {("acme-core", "1.0", "h0_0", "noarch")}
        assert (prefix / "share/acme-core/VERSION").read_text() == "1.0\n"
        assert not (workspace_dir(agent, environment_id) / ".darb" / "dirty").exists()
        assert failed.result.lockfile == first.result.lockfile

        new = new_id()
        failed_new = apply(agent, new, newer.result.lockfile, ["acme-core ==2.0"])
        assert not failed_new.result.success
        assert not workspace_dir(agent, new).exists()
        assert failed_new.result.manifest == "" and not failed_new.result.packages
