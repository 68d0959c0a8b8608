"""Environment history through real processes: versions, rollback, diff and import.

Every job runs on the real agent with the builtin engine against the local acme channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from darb.v1 import common_pb2, environments_pb2
from shared.lockhash import read_lock_text
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess, Client
from tests.api.faults import install_engine_pid, ready_environment

COMPLETED = common_pb2.JOB_STATUS_COMPLETED
FAILED = common_pb2.JOB_STATUS_FAILED
ROLLBACK = common_pb2.JOB_TYPE_ROLLBACK_ENVIRONMENT


@pytest.fixture(scope="module")
def user(api: ApiProcess) -> Client:
    return api.new_user()


def _versions(client: Client, environment_id: str) -> list[environments_pb2.EnvironmentVersion]:
    request = environments_pb2.ListEnvironmentVersionsRequest(environment_id=environment_id)
    return list(client.call(client.envs.ListEnvironmentVersions, request).versions)


def _version(
    client: Client, environment_id: str, version: int = 0
) -> environments_pb2.EnvironmentVersion:
    request = environments_pb2.GetEnvironmentVersionRequest(
        environment_id=environment_id, version=version
    )
    return client.call(client.envs.GetEnvironmentVersion, request).version


def _rollback(client: Client, environment_id: str, version: int) -> common_pb2.Job:
    request = environments_pb2.RollbackEnvironmentRequest(
        environment_id=environment_id, version=version
    )
    return client.call(client.envs.RollbackEnvironment, request).job


def _diff(
    client: Client, environment_id: str, old: int, new: int
) -> environments_pb2.DiffEnvironmentVersionsResponse:
    request = environments_pb2.DiffEnvironmentVersionsRequest(
        environment_id=environment_id, from_version=old, to_version=new
    )
    return client.call(client.envs.DiffEnvironmentVersions, request)


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def _installed(agent: AgentProcess, environment_id: str) -> dict[str, tuple[str, str]]:
    """name -> (version, build) of the prefix's conda-meta records."""
    meta = agent.data_dir / "environments" / environment_id / ".pixi/envs/default/conda-meta"
    records = [json.loads(path.read_text()) for path in meta.glob("*.json")]
    return {r["name"]: (r["version"], r["build"]) for r in records}


def _locked(lockfile: str) -> dict[str, tuple[str, str]]:
    """name -> (version, build) of a lock's records for its (one) platform."""
    environment = read_lock_text(lockfile).default_environment()
    assert environment is not None
    [platform] = environment.platforms()
    records = environment.conda_repodata_records_for_platform(platform) or []
    return {r.name.normalized: (str(r.version), str(r.build)) for r in records}


def test_each_successful_change_adds_one_version_and_a_failure_none(user: Client) -> None:
    environment_id = ready_environment(user, "versioned", ["acme-core ==1.0"])
    assert user.wait(user.install(environment_id, ["acme-utils"]).id).status == COMPLETED
    assert user.wait(user.install(environment_id, ["acme-broken"]).id).status == FAILED
    assert user.wait(user.remove(environment_id, ["acme-utils"]).id).status == COMPLETED
    versions = _versions(user, environment_id)
    assert [v.version for v in versions] == [3, 2, 1]
    assert [v.description for v in versions] == [
        "removed acme-utils",
        "installed acme-utils",
        "created with acme-core ==1.0",
    ]
    assert all(v.created_by == user.user.id and not v.manifest for v in versions)
    assert {p.name for p in versions[1].packages} == {"acme-core", "acme-utils"}
    assert user.get_env(environment_id).current_version == 3
    # Equal package sets hash equal: version 3 holds what version 1 held.
    assert versions[0].content_hash == versions[2].content_hash != versions[1].content_hash
    current = _version(user, environment_id)
    assert current.version == 3 and "acme-core" in current.manifest and current.lockfile


def test_rollback_restores_the_exact_builds_as_a_new_version(
    user: Client, shared_agent: AgentProcess
) -> None:
    environment_id = ready_environment(user, "rolled", ["acme-core ==1.0"])
    first = _version(user, environment_id, 1)
    assert user.wait(user.install(environment_id, ["acme-core ==2.0"]).id).status == COMPLETED
    job = _rollback(user, environment_id, 1)
    assert job.type == ROLLBACK
    assert user.wait(job.id).status == COMPLETED
    current = _version(user, environment_id)
    assert (current.version, current.description) == (3, "rolled back to version 1")
    assert current.content_hash == first.content_hash
    assert _installed(shared_agent, environment_id) == _locked(first.lockfile)
    assert current.lockfile and _locked(current.lockfile) == _locked(first.lockfile)
    changes = _diff(user, environment_id, 2, 3)
    assert [(c.name, c.from_version, c.to_version) for c in changes.changed] == [
        ("acme-core", "2.0", "1.0")
    ]
    assert [(c.name, c.from_spec, c.to_spec) for c in changes.requested_changed] == [
        ("acme-core", "acme-core ==2.0", "acme-core ==1.0")
    ]
    # Back to the current version: allowed, and the same package set again.
    again = _rollback(user, environment_id, 3)
    assert user.wait(again.id).status == COMPLETED
    assert _version(user, environment_id).content_hash == first.content_hash


def test_a_rollback_queued_behind_a_running_install_runs_after_it(user: Client) -> None:
    environment_id = ready_environment(user, "queued-rollback", ["acme-core ==1.0"])
    install = user.install(environment_id, ["acme-big"])
    install_engine_pid(user, install.id)  # running
    rollback = _rollback(user, environment_id, 1)
    finished_install, finished_rollback = user.wait(install.id), user.wait(rollback.id)
    assert (finished_install.status, finished_rollback.status) == (COMPLETED, COMPLETED)
    assert finished_rollback.started_at.ToNanoseconds() >= (
        finished_install.completed_at.ToNanoseconds()
    )
    assert "acme-big" not in user.packages(environment_id)


def test_diff_lists_added_removed_and_changed_by_name(user: Client) -> None:
    environment_id = ready_environment(user, "diffed", ["acme-core ==1.0", "acme-tool"])
    job = user.install(environment_id, ["acme-core ==1.1", "acme-extras"])
    assert user.wait(job.id).status == COMPLETED
    assert user.wait(user.remove(environment_id, ["acme-tool"]).id).status == COMPLETED
    diff = _diff(user, environment_id, 1, 0)
    assert [p.name for p in diff.added] == ["acme-extras", "acme-utils"]
    assert [p.name for p in diff.removed] == ["acme-tool"]
    assert [(c.name, c.from_version, c.to_version) for c in diff.changed] == [
        ("acme-core", "1.0", "1.1")
    ]
    assert [(r.name, r.spec) for r in diff.requested_added] == [("acme-extras", "acme-extras")]
    assert [(r.name, r.spec) for r in diff.requested_removed] == [("acme-tool", "acme-tool")]


def test_unknown_versions_and_other_users_environments_are_not_found(
    api: ApiProcess, user: Client
) -> None:
    environment_id = ready_environment(user, "private-history", ["acme-core"])
    for call in (
        lambda: _version(user, environment_id, 7),
        lambda: _rollback(user, environment_id, 7),
        lambda: _diff(user, environment_id, 1, 7),
    ):
        assert _code(call)[0] == grpc.StatusCode.NOT_FOUND
    stranger = api.new_user()
    for call in (
        lambda: _versions(stranger, environment_id),
        lambda: _version(stranger, environment_id, 1),
        lambda: _rollback(stranger, environment_id, 1),
    ):
        assert _code(call)[0] == grpc.StatusCode.NOT_FOUND
    code, details = _code(lambda: _rollback(user, environment_id, -1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in details


def test_versions_stay_readable_by_the_owner_after_a_delete(user: Client) -> None:
    environment_id = ready_environment(user, "deleted-history", ["acme-core"])
    request = environments_pb2.DeleteEnvironmentRequest(id=environment_id)
    delete = user.call(user.envs.DeleteEnvironment, request).job
    assert user.wait(delete.id).status == COMPLETED
    assert [v.version for v in _versions(user, environment_id)] == [1]
    assert _version(user, environment_id, 1).lockfile


def test_importing_another_environments_export_reproduces_its_builds(
    user: Client, shared_agent: AgentProcess
) -> None:
    source = ready_environment(user, "export-source", ["acme-core ==1.1", "acme-utils"])
    exported = user.call(
        user.envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=source)
    )
    request = environments_pb2.CreateEnvironmentRequest(
        name="imported", manifest=exported.manifest, lockfile=exported.lockfile
    )
    created = user.call(user.envs.CreateEnvironment, request)
    assert user.wait(created.job.id).status == COMPLETED
    imported = created.environment.id
    assert _installed(shared_agent, imported) == _installed(shared_agent, source)
    [version] = _versions(user, imported)
    assert version.description == "imported from pixi.lock"
    assert version.content_hash == _version(user, source).content_hash


def test_import_of_a_manifest_alone_and_of_an_environment_yml_solves(user: Client) -> None:
    manifest = (
        '[workspace]\nname = "x"\nchannels = []\nplatforms = ["linux-64"]\n\n'
        '[dependencies]\nacme-core = "==1.1"\n'
    )
    yml = "name: ignored\ndependencies:\n  - acme-utils\n"
    for name, fields, source in (
        ("from-toml", {"manifest": manifest}, "pixi.toml"),
        ("from-yml", {"environment_yml": yml}, "environment.yml"),
    ):
        request = environments_pb2.CreateEnvironmentRequest(name=name, **fields)
        created = user.call(user.envs.CreateEnvironment, request)
        assert user.wait(created.job.id).status == COMPLETED, name
        assert _versions(user, created.environment.id)[0].description == f"imported from {source}"
    assert user.packages(created.environment.id).keys() == {"acme-core", "acme-utils"}


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"environment_yml": "dependencies:\n  - acme-core\n  - pip:\n    - requests\n"}, "pip:"),
        ({"environment_yml": "dependencies: [acme-core]\nprefix: /opt/x\n"}, "'prefix'"),
        ({"environment_yml": "dependencies: [\n"}, "not valid YAML"),
        ({"manifest": "[workspace\n"}, "not valid TOML"),
        ({"manifest": '[workspace]\nname="x"\n[tasks]\nx = "y"\n'}, "[tasks]"),
        ({"lockfile": "version: 6\n"}, "needs its manifest"),
        ({"manifest": "[dependencies]\n", "environment_yml": "x: 1\n"}, "not both"),
        ({"manifest": '[workspace]\nchannels = ["https://evil.example/c"]\n'}, "not allowed"),
        ({"manifest": "[dependencies]\nacme-core = '*'\n", "packages": ["acme-tool"]}, "file"),
    ],
)
def test_imports_darb_cannot_honour_are_refused_before_anything_is_queued(
    user: Client, fields: dict[str, object], says: str
) -> None:
    request = environments_pb2.CreateEnvironmentRequest(name="refused-import", **fields)
    code, details = _code(lambda: user.call(user.envs.CreateEnvironment, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in details


def test_a_lock_naming_a_channel_that_is_not_allowed_is_refused(user: Client) -> None:
    source = ready_environment(user, "lock-source", ["acme-core"])
    exported = user.call(
        user.envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=source)
    )
    [channel] = {
        line.split("channel: ", 1)[1]
        for line in exported.lockfile.splitlines()
        if line.strip().startswith("channel: ")
    }
    evil = "https://evil.example/channel"
    forged = exported.lockfile.replace(channel, evil).replace(channel.removeprefix("file://"), evil)
    request = environments_pb2.CreateEnvironmentRequest(
        name="forged", manifest=exported.manifest, lockfile=forged
    )
    code, details = _code(lambda: user.call(user.envs.CreateEnvironment, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "evil.example" in details and "not allowed" in details
    mismatched = exported.manifest.replace('acme-core = "*"', 'acme-core = "==2.0"')
    locked_1 = user.call(
        user.envs.ExportEnvironment,
        environments_pb2.ExportEnvironmentRequest(
            id=ready_environment(user, "lock-old", ["acme-core ==1.0"])
        ),
    )
    request = environments_pb2.CreateEnvironmentRequest(
        name="mismatched", manifest=mismatched, lockfile=locked_1.lockfile
    )
    code, details = _code(lambda: user.call(user.envs.CreateEnvironment, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not satisfy" in details and "acme-core ==2.0" in details


def test_an_environment_locked_for_several_platforms(user: Client) -> None:
    """Locked for osx-arm64 too: the environment and its version say so, ListPackages
    and the diff read the other platform from the lock, and a platform the lock does not
    have or darb does not know is refused."""
    request = environments_pb2.CreateEnvironmentRequest(
        name="two-platforms", packages=["acme-native"], platforms=["osx-arm64"]
    )
    created = user.call(user.envs.CreateEnvironment, request)
    assert user.wait(created.job.id).status == COMPLETED
    environment_id = created.environment.id
    assert set(user.get_env(environment_id).platforms) == {"linux-64", "osx-arm64"}
    assert set(_version(user, environment_id).platforms) == {"linux-64", "osx-arm64"}

    def listed(platform: str) -> dict[str, str]:
        request = environments_pb2.ListPackagesRequest(
            environment_id=environment_id, platform=platform
        )
        response = user.call(user.envs.ListPackages, request)
        return {p.name: p.channel for p in response.packages}

    assert listed("") == listed("linux-64") and "acme-native" in listed("")
    assert set(listed("osx-arm64")) == {"acme-native"}
    assert user.wait(user.install(environment_id, ["acme-core"]).id).status == COMPLETED
    diff = user.call(
        user.envs.DiffEnvironmentVersions,
        environments_pb2.DiffEnvironmentVersionsRequest(
            environment_id=environment_id, from_version=1, to_version=2, platform="osx-arm64"
        ),
    )
    assert [p.name for p in diff.added] == ["acme-core"]
    for platform, says in (("win-64", "not win-64"), ("amiga", "not amiga")):
        request = environments_pb2.ListPackagesRequest(
            environment_id=environment_id, platform=platform
        )
        code, details = _code(lambda r=request: user.call(user.envs.ListPackages, r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details, details
    bad = environments_pb2.CreateEnvironmentRequest(
        name="bad-platform", packages=["acme-core"], platforms=["amiga"]
    )
    code, _ = _code(lambda: user.call(user.envs.CreateEnvironment, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_rolled_back_environments_export_installs_the_same_builds_again(
    user: Client, shared_agent: AgentProcess
) -> None:
    environment_id = ready_environment(user, "rollback-export", ["acme-core ==1.0", "acme-tool"])
    assert user.wait(user.remove(environment_id, ["acme-tool"]).id).status == COMPLETED
    assert user.wait(_rollback(user, environment_id, 1).id).status == COMPLETED
    exported = user.call(
        user.envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=environment_id)
    )
    request = environments_pb2.CreateEnvironmentRequest(
        name="rollback-reimport", manifest=exported.manifest, lockfile=exported.lockfile
    )
    created = user.call(user.envs.CreateEnvironment, request)
    assert user.wait(created.job.id).status == COMPLETED
    copy = _installed(shared_agent, created.environment.id)
    assert copy == _installed(shared_agent, environment_id) == _locked(exported.lockfile)
    assert set(copy) == {"acme-core", "acme-tool"}


def test_a_rollback_to_a_version_whose_channel_is_no_longer_allowed_is_refused(
    own_database: str,
    api_factory: Callable[..., ApiProcess],
    channel_url: str,
    tmp_path: Path,
) -> None:
    """The allowlist changed since the version was made (a second control plane on the
    same database, allowing only another channel): FAILED_PRECONDITION naming it."""
    first = api_factory(own_database)
    client = first.new_user()
    environment_id = ready_environment(client, "old-channel", ["acme-core ==1.0"])
    assert client.wait(client.install(environment_id, ["acme-tool"]).id).status == COMPLETED
    other = (tmp_path / "other-channel").as_uri()
    stricter = api_factory(own_database, DARB_ALLOWED_CHANNELS=other, DARB_DEFAULT_CHANNELS=other)
    client = Client(grpc.insecure_channel(stricter.addr), token=client.token)
    code, details = _code(lambda: _rollback(client, environment_id, 1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert channel_url in details and "no longer allowed" in details
