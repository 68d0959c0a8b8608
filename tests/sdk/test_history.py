"""Environment history through the SDK and the CLI against the real stack: versions,
diffs, rollbacks and environments imported from a pixi.toml (+ pixi.lock) or an
environment.yml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import darb
from darb.v1 import environments_pb2
from tests.sdk.conftest import Account, Cli

WAIT = 120
VERSION_KEYS = {field.name for field in environments_pb2.EnvironmentVersion.DESCRIPTOR.fields}
DIFF_KEYS = {
    field.name for field in environments_pb2.DiffEnvironmentVersionsResponse.DESCRIPTOR.fields
}


def _completed(client: darb.Client, job: darb.Job) -> darb.Job:
    done = client.jobs.wait(job.id, timeout=WAIT)
    assert done.status == darb.JobStatus.COMPLETED, done.error
    return done


def _create(client: darb.Client, name: str, *specs: str, **files: str) -> darb.Environment:
    environment, job = client.environments.create(name, packages=specs, **files)
    _completed(client, job)
    return client.environments.get(environment.id)


def _installed(client: darb.Client, environment_id: str) -> dict[str, str]:
    return {p.name: p.version for p in client.packages.list(environment_id)}


# SDK


def test_each_successful_job_makes_a_version(client: darb.Client) -> None:
    environment, create = client.environments.create("versioned", packages=["acme-core ==1.0"])
    _completed(client, create)
    install = client.packages.install(environment.id, ["acme-utils"])
    _completed(client, install)
    failed = client.packages.install(environment.id, ["acme-broken"])
    assert client.jobs.wait(failed.id, timeout=WAIT).status == darb.JobStatus.FAILED

    versions = list(client.environments.versions(environment.id, page_size=1))
    assert [v.version for v in versions] == [2, 1]
    assert [v.job_id for v in versions] == [install.id, create.id]
    me = client.whoami().id
    assert all(v.created_by == me and v.description and v.created_at for v in versions)
    assert [{p.name for p in v.packages} for v in versions] == [
        {"acme-core", "acme-utils"},
        {"acme-core"},
    ]
    assert all(v.manifest == "" and v.lockfile == "" for v in versions)  # texts: version()
    assert client.environments.get(environment.id).current_version == 2

    current = client.environments.version(environment.id)
    assert current.version == 2 and current.content_hash == versions[0].content_hash
    export = client.environments.export(environment.id)
    assert (current.manifest, current.lockfile) == (export.manifest, export.lockfile)
    first = client.environments.version(environment.id, 1)
    assert "acme-utils" not in first.manifest and "acme-core" in first.lockfile
    assert first.content_hash != current.content_hash


def test_diff_rollback_and_diff_again(client: darb.Client) -> None:
    environment = _create(client, "upgraded", "acme-core ==1.0")
    _completed(client, client.packages.install(environment.id, ["acme-core ==1.1"]))

    diff = client.environments.diff(environment.id, 1)
    assert diff.changed == (darb.PackageChange("acme-core", "1.0", "1.1", *_builds(diff)),)
    assert diff.added == diff.removed == ()
    assert diff.requested_changed == (
        darb.RequestedSpecChange("acme-core", "acme-core ==1.0", "acme-core ==1.1"),
    )
    assert client.environments.diff(environment.id, 2, 1).changed[0].to_version == "1.0"
    assert client.environments.diff(environment.id, 2).empty

    job = client.environments.rollback(environment.id, 1)
    assert job.type == darb.JobType.ROLLBACK_ENVIRONMENT
    _completed(client, job)
    first, current = (client.environments.version(environment.id, n) for n in (1, 0))
    assert current.version == 3 and current.job_id == job.id
    assert "1" in current.description
    assert current.packages == first.packages
    assert current.content_hash == first.content_hash
    assert tuple(client.packages.list(environment.id)) == first.packages
    assert client.environments.diff(environment.id, 1).empty
    assert client.environments.get(environment.id).current_version == 3


def _builds(diff: darb.VersionDiff) -> tuple[str, str]:
    return diff.changed[0].from_build, diff.changed[0].to_build


def test_an_export_reproduces_the_environment(client: darb.Client) -> None:
    original = _create(client, "original", "acme-core ==1.0", "acme-utils")
    export = client.environments.export(original.id)

    copy, job = client.environments.create(
        "copy", manifest=export.manifest, lockfile=export.lockfile
    )
    _completed(client, job)
    assert client.packages.list(copy.id) == client.packages.list(original.id)
    source = client.environments.version(original.id)
    assert client.environments.version(copy.id).content_hash == source.content_hash

    solved = _create(client, "solved", manifest=export.manifest)
    assert _installed(client, solved.id) == {"acme-core": "1.0", "acme-utils": "1.0"}


def test_an_environment_yml_makes_an_environment(client: darb.Client, channel_url: str) -> None:
    yml = (
        "name: from-yml\n"
        f"channels:\n  - {channel_url}\n"
        "dependencies:\n  - acme-core ==1.1\n  - acme-utils\n"
    )
    environment = _create(client, "from-yml", environment_yml=yml)
    assert _installed(client, environment.id) == {"acme-core": "1.1", "acme-utils": "1.0"}
    assert environment.channels == (channel_url,)


def test_a_version_names_its_platforms(client: darb.Client) -> None:
    environment, job = client.environments.create(
        "multi", packages=["acme-core"], platforms=["osx-arm64"]
    )
    _completed(client, job)
    environment = client.environments.get(environment.id)
    assert "osx-arm64" in environment.platforms and len(environment.platforms) == 2
    assert set(client.environments.version(environment.id).platforms) == set(environment.platforms)
    on_mac = client.packages.list(environment.id, platform="osx-arm64")
    assert [p.name for p in on_mac] == ["acme-core"]
    assert client.environments.diff(environment.id, 1, platform="osx-arm64").empty


# CLI


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def _error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    return result.stderr.strip().splitlines()[-1]


def test_cli_history_diff_show_and_rollback(logged_in: Cli, account: Account) -> None:
    _ok(logged_in("env", "create", "hist", "-p", "acme-core ==1.0"))
    _ok(logged_in("pkg", "add", "hist", "acme-core ==1.1"))

    table = _ok(logged_in("env", "history", "hist")).splitlines()
    assert table[0].split() == ["VERSION", "WHEN", "BY", "DESCRIPTION", "HASH"]
    versions = json.loads(_ok(logged_in("env", "history", "hist", "-o", "json")))
    assert [v["version"] for v in versions] == [2, 1]
    assert all(set(v) == VERSION_KEYS for v in versions)
    for row, version in zip(table[1:], versions, strict=True):
        cells = row.split()
        assert cells[0] == str(version["version"]) and cells[3] == account.username
        assert cells[-1] == version["content_hash"][:12]
        assert version["description"] in row

    diff = _ok(logged_in("env", "diff", "hist", "1"))
    assert diff.splitlines()[0] == "hist: version 1 → version 2 (current)"
    assert "  ~ acme-core 1.0 → 1.1" in diff.splitlines()
    assert "  ~ acme-core ==1.0 → ==1.1" in diff.splitlines()
    as_json = json.loads(_ok(logged_in("env", "diff", "hist", "1", "2", "-o", "json")))
    assert set(as_json) == DIFF_KEYS and as_json["added"] == as_json["removed"] == []
    [change] = as_json["changed"]
    assert (change["name"], change["from_version"], change["to_version"]) == (
        "acme-core",
        "1.0",
        "1.1",
    )

    shown = _ok(logged_in("env", "show", "hist", "--version", "1", "--files"))
    assert "version:     1\n" in shown and "==> pixi.toml <==" in shown
    first = json.loads(_ok(logged_in("env", "show", "hist", "--version", "1", "-o", "json")))
    assert 'acme-core = "==1.0"' in first["manifest"] and shown.endswith(first["lockfile"])

    rolled = logged_in("env", "rollback", "hist", "1")
    assert "Rolling back hist to version 1" in _ok(rolled)
    assert "completed in" in rolled.stderr
    assert _ok(logged_in("env", "diff", "hist", "1")).splitlines()[1:] == ["no differences"]
    installed = json.loads(_ok(logged_in("pkg", "ls", "hist", "-o", "json")))
    assert installed == first["packages"]
    assert _ok(logged_in("env", "history", "hist")).splitlines()[1].split()[0] == "3"

    assert "has no version 9" in _error(logged_in("env", "rollback", "hist", "9"))
    assert "version number" in _error(logged_in("env", "rollback", "hist", "0"), code=2)


def test_cli_create_from_files(logged_in: Cli, tmp_path: Path, channel_url: str) -> None:
    _ok(logged_in("env", "create", "source", "-p", "acme-core ==1.0", "-p", "acme-utils"))
    _ok(logged_in("env", "export", "source", "--dir", "out"))

    copy = logged_in("env", "create", "copy", "--from", "out/pixi.toml", "--lock", "out/pixi.lock")
    assert "Creating environment copy" in _ok(copy) and "from out/pixi.toml" in copy.stdout
    listed = [_ok(logged_in("pkg", "ls", name, "-o", "json")) for name in ("source", "copy")]
    assert json.loads(listed[0]) == json.loads(listed[1])

    yml = tmp_path / "environment.yml"
    yml.write_text(f"channels: [{channel_url}]\ndependencies: [acme-core ==1.1]\n")
    _ok(logged_in("env", "create", "from-yml", "--from", "environment.yml"))
    [package] = json.loads(_ok(logged_in("pkg", "ls", "from-yml", "-o", "json")))
    assert (package["name"], package["version"]) == ("acme-core", "1.1")

    with_lock = logged_in("env", "create", "x", "--from", "environment.yml", "--lock", "l")
    assert "not with an environment.yml" in _error(with_lock)
    mixed = logged_in("env", "create", "x", "--from", "out/pixi.toml", "-p", "acme-core")
    assert "drop -p and -c" in _error(mixed)
    assert "No such file" in _error(logged_in("env", "create", "x", "--from", "missing.toml"))
