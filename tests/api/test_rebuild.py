"""Agents as caches of PostgreSQL: environments rebuilt from their current version when
their agent lost them, moved between agents and drained off one, through real control
planes and real agents (real processes, real files: an agent's environments or whole
data directory are deleted for real and the agent restarted on the same address)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from darb.v1 import admin_pb2, admin_pb2_grpc, common_pb2, environments_pb2
from testkit.agent import AgentProcess, start_agent
from testkit.control_plane import ApiProcess, Client, status_code
from tests.api.faults import ready_environment

COMPLETED = common_pb2.JOB_STATUS_COMPLETED
READY = common_pb2.ENVIRONMENT_STATUS_READY
REBUILD = common_pb2.JOB_TYPE_REBUILD_ENVIRONMENT
MOVE = common_pb2.JOB_TYPE_MOVE_ENVIRONMENT


def disk_builds(agent: AgentProcess, environment_id: str) -> set[tuple[str, str, str]]:
    """(name, version, build) of every package in the prefix on the agent's disk."""
    meta = agent.data_dir / "environments" / environment_id / ".pixi/envs/default/conda-meta"
    records = [json.loads(path.read_text()) for path in meta.glob("*.json")]
    return {(record["name"], record["version"], record["build"]) for record in records}


def on_disk(agent: AgentProcess, environment_id: str) -> bool:
    return (agent.data_dir / "environments" / environment_id).exists()


def listed_builds(client: Client, environment_id: str) -> set[tuple[str, str, str]]:
    request = environments_pb2.ListPackagesRequest(environment_id=environment_id)
    packages = client.call(client.envs.ListPackages, request).packages
    return {(p.name, p.version, p.build) for p in packages}


def history(client: Client, environment_id: str) -> list[environments_pb2.EnvironmentVersion]:
    request = environments_pb2.ListEnvironmentVersionsRequest(environment_id=environment_id)
    return list(client.call(client.envs.ListEnvironmentVersions, request).versions)


def without_mark(version: environments_pb2.EnvironmentVersion) -> bytes:
    copy = environments_pb2.EnvironmentVersion()
    copy.CopyFrom(version)
    copy.ClearField("rebuild_count")
    copy.ClearField("rebuilt_at")
    return copy.SerializeToString(deterministic=True)


def rebuild(client: Client, environment_id: str) -> common_pb2.Job:
    request = environments_pb2.RebuildEnvironmentRequest(environment_id=environment_id)
    return client.call(client.envs.RebuildEnvironment, request).job


def move(client: Client, environment_id: str, agent: str) -> common_pb2.Job:
    request = environments_pb2.MoveEnvironmentRequest(environment_id=environment_id, agent=agent)
    return client.call(client.envs.MoveEnvironment, request).job


def drain(client: Client, agent: str) -> admin_pb2.DrainAgentResponse:
    stub = admin_pb2_grpc.AdminServiceStub(client.channel)
    return client.call(stub.DrainAgent, admin_pb2.DrainAgentRequest(agent=agent))


def completed(client: Client, job: common_pb2.Job) -> common_pb2.Job:
    ended = client.wait(job.id, timeout=300)
    assert ended.status == COMPLETED, (ended.error, ended.logs)
    return ended


def test_environments_whose_files_are_gone_come_back(
    tmp_path: Path,
    channel_url: str,
    agent_factory: Callable[..., AgentProcess],
    own_database: str,
    api_factory: Callable[..., ApiProcess],
) -> None:
    agent = agent_factory()
    api = api_factory(own_database, executors=agent.addr)
    admin, user = api.admin(), api.new_user()
    changed = ready_environment(user, "changed", ["acme-core ==1.1"])
    completed(user, user.install(changed, ["acme-utils"]))
    rebuilt = ready_environment(user, "rebuilt", ["acme-utils"])
    big = ready_environment(user, "big", ["acme-big"])  # 80 MB: its rebuild takes a while
    before = {env: disk_builds(agent, env) for env in (changed, rebuilt, big)}
    versions = {env: history(user, env) for env in (changed, rebuilt)}
    assert all(before.values()) and len(versions[changed]) == 2

    # The environments' files and the package cache are lost, the agent restarts on
    # what is left of its data directory: as its identity stayed, nothing is rebuilt
    # before a job needs it (an emptied directory: tests/api/test_agent_identity.py).
    agent.stop()
    shutil.rmtree(agent.data_dir / "environments")
    shutil.rmtree(agent.data_dir / "pkgs")
    agent = start_agent(agent.data_dir, channel_url, token=agent.token, addr=agent.addr)
    try:
        assert not on_disk(agent, changed) and not on_disk(agent, rebuilt)

        # The next job needs the environment: it is rebuilt first, then the job runs.
        job = completed(user, user.install(changed, ["acme-extras"]))
        assert "rebuilding environment 'changed'" in job.logs and "no solve" in job.logs
        assert "rebuilt version 2" in job.logs
        extras = {row for row in disk_builds(agent, changed) if row[0] == "acme-extras"}
        assert disk_builds(agent, changed) == before[changed] | extras and extras
        after = history(user, changed)
        assert [v.version for v in after] == [3, 2, 1]
        assert [without_mark(v) for v in after[1:]] == [without_mark(v) for v in versions[changed]]
        assert after[1].rebuild_count == 1 and after[1].HasField("rebuilt_at")
        assert after[2].rebuild_count == 0 and after[0].rebuild_count == 0

        # An admin rebuilds the other: same builds, no version added, only the mark.
        job = completed(admin, rebuild(admin, rebuilt))
        assert job.type == REBUILD and "rebuilt version 1" in job.logs
        assert disk_builds(agent, rebuilt) == before[rebuilt] == listed_builds(user, rebuilt)
        after = history(user, rebuilt)
        assert [without_mark(v) for v in after] == [without_mark(v) for v in versions[rebuilt]]
        assert after[0].rebuild_count == 1
        assert user.get_env(rebuilt).status == READY and user.get_env(changed).status == READY

        # While it is rebuilt the environment is REBUILDING, never READY without its files.
        job = rebuild(admin, big)
        seen = []
        while not user.get_job(job.id).completed_at.seconds:
            status = user.get_env(big).status
            seen.append(status)
            if status == READY:
                assert disk_builds(agent, big) == before[big]
            time.sleep(0.02)
        completed(admin, job)
        assert common_pb2.ENVIRONMENT_STATUS_REBUILDING in seen, seen
        assert user.get_env(big).status == READY and disk_builds(agent, big) == before[big]

        # Only admins rebuild and move.
        assert status_code(lambda: rebuild(user, rebuilt)) == grpc.StatusCode.PERMISSION_DENIED
        denied = status_code(lambda: move(user, rebuilt, agent.addr))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
    finally:
        agent.stop()


def test_environments_follow_their_agents_out_of_the_configuration(
    channel_url: str,
    agent_factory: Callable[..., AgentProcess],
    own_database: str,
    api_factory: Callable[..., ApiProcess],
) -> None:
    old, new, lost = agent_factory(), agent_factory(), agent_factory()
    api = api_factory(own_database, executors=lost.addr)
    user = api.new_user()
    doomed = ready_environment(user, "doomed", ["acme-core"])
    api.stop()
    lost.stop()  # that agent is gone for good
    api = api_factory(own_database, executors=old.addr)
    user = api.login(user.user.username, "password-1")
    envs = [ready_environment(user, f"e{n}", ["acme-utils"]) for n in range(5)]
    builds = {env: disk_builds(old, env) for env in envs}
    api.stop()

    # The old agent leaves DARB_EXECUTORS: the next job rebuilds on the new one there.
    api = api_factory(own_database, executors=new.addr)
    user = api.login(user.user.username, "password-1")
    admin = api.admin()
    job = completed(user, user.install(envs[0], ["acme-extras"]))
    assert f"its agent {old.addr} is not in DARB_EXECUTORS" in job.logs, job.logs
    assert f"moved from agent {old.addr}" in job.logs
    assert on_disk(new, envs[0]) and builds[envs[0]] < disk_builds(new, envs[0])
    # An admin's rebuild of one whose agent is gone goes to an answering agent too.
    job = completed(admin, rebuild(admin, envs[1]))
    assert disk_builds(new, envs[1]) == builds[envs[1]]
    assert on_disk(old, envs[1])  # the old agent was not asked: nothing freed there
    # Deleting one whose agent is gone for good completes without it, and says so.
    request = environments_pb2.DeleteEnvironmentRequest(id=doomed)
    job = completed(user, user.call(user.envs.DeleteEnvironment, request).job)
    assert f"could not free its directory on agent {lost.addr}" in job.logs, job.logs
    gone = status_code(lambda: user.get_env(doomed))
    assert gone == grpc.StatusCode.NOT_FOUND
    api.stop()

    # Both configured: a move rebuilds on the target and frees the old directory.
    api = api_factory(own_database, executors=f"{old.addr},{new.addr}")
    admin = api.admin()
    user = api.login(user.user.username, "password-1")
    bad = status_code(lambda: move(admin, envs[2], "127.0.0.1:1"))
    assert bad == grpc.StatusCode.INVALID_ARGUMENT
    job = completed(admin, move(admin, envs[2], new.addr))
    assert job.type == MOVE and f"freed its directory on agent {old.addr}" in job.logs
    assert not on_disk(old, envs[2]) and disk_builds(new, envs[2]) == builds[envs[2]]
    # A job queued behind the move waits for it and runs on the new agent.
    queued = user.install(envs[2], ["acme-extras"])
    completed(user, queued)
    assert "acme-extras" in {row[0] for row in disk_builds(new, envs[2])}

    # Draining the old agent moves the rest; its disk ends up with no environment.
    answer = drain(admin, old.addr)
    assert sorted(job.environment_id for job in answer.jobs) == sorted(envs[3:])
    assert drain(admin, old.addr).jobs == []  # already moving: not twice
    for job in answer.jobs:
        completed(admin, job)
    for env in envs[3:]:
        assert disk_builds(new, env) == builds[env] == listed_builds(user, env)
        assert user.get_env(env).status == READY
    # What is left there is what was rebuilt elsewhere while it was not configured.
    left = sorted(path.name for path in (old.data_dir / "environments").iterdir())
    assert left == sorted(envs[:2])
    assert status_code(lambda: drain(user, old.addr)) == grpc.StatusCode.PERMISSION_DENIED
    api.stop()

    # DARB_DRAIN at start moves everything off the new agent again.
    api = api_factory(own_database, executors=f"{old.addr},{new.addr}", DARB_DRAIN=new.addr)
    user = api.login(user.user.username, "password-1")
    deadline = time.monotonic() + 300
    while any(on_disk(new, env) for env in envs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [env for env in envs if on_disk(new, env)]
    for env in envs[2:]:
        assert {row for row in disk_builds(old, env)} >= builds[env]


def test_a_failed_rebuild_leaves_the_environment_rebuilding_until_one_succeeds(
    channel_url: str,
    agent_factory: Callable[..., AgentProcess],
    own_database: str,
    api_factory: Callable[..., ApiProcess],
) -> None:
    agent = agent_factory()
    # An agent that deems its disk full, kept out of placement by DARB_DRAIN.
    full = agent_factory(DARB_MIN_FREE_BYTES=str(2**62))
    executors = f"{agent.addr},{full.addr}"
    api = api_factory(own_database, executors=executors, DARB_DRAIN=full.addr)
    user, admin = api.new_user(), api.admin()
    env = ready_environment(user, "fragile", ["acme-utils"])
    before = disk_builds(agent, env)
    # A move that the target refuses leaves the environment READY where it was.
    failed = admin.wait(move(admin, env, full.addr).id, timeout=300)
    assert failed.status == common_pb2.JOB_STATUS_FAILED, failed.logs
    assert user.get_env(env).status == READY and disk_builds(agent, env) == before
    assert not on_disk(full, env)
    # The agent comes back with an empty disk that it deems full: it refuses the rebuild
    # (an ApplyLock) that a remove (not refused for disk space) asks for.
    agent.stop()
    shutil.rmtree(agent.data_dir)
    full = {"DARB_MIN_FREE_BYTES": str(2**62)}
    agent = start_agent(agent.data_dir, channel_url, agent.token, full, addr=agent.addr)
    try:
        failed = user.wait(user.remove(env, ["acme-utils"]).id, timeout=300)
        assert failed.status == common_pb2.JOB_STATUS_FAILED and "rebuilding" in failed.logs
        assert "RESOURCE_EXHAUSTED" in failed.error or "free" in failed.error, failed.error
        shown = user.get_env(env)
        assert shown.status == common_pb2.ENVIRONMENT_STATUS_REBUILDING
        assert "rebuild failed" in shown.error, shown.error
        assert len(history(user, env)) == 1 and history(user, env)[0].rebuild_count == 0
    finally:
        agent.stop()
    # With room again, the next job rebuilds it and runs.
    agent = start_agent(agent.data_dir, channel_url, token=agent.token, addr=agent.addr)
    try:
        completed(user, user.install(env, ["acme-extras"]))
        shown = user.get_env(env)
        assert shown.status == READY and shown.error == ""
        assert disk_builds(agent, env) > before and history(user, env)[1].rebuild_count == 1
    finally:
        agent.stop()
