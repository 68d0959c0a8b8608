"""The SDK's admin calls for agents as caches: rebuild and move, against the real stack."""

from __future__ import annotations

import pytest

import darb
from testkit.agent import AgentProcess
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess

WAIT = 120


def test_rebuild_and_move_from_the_sdk(
    api: ApiProcess, agent: AgentProcess, client: darb.Client
) -> None:
    environment, job = client.environments.create("sdk-rebuild", packages=["acme-utils"])
    assert client.jobs.wait(job.id, timeout=WAIT).status == darb.JobStatus.COMPLETED
    before = {(p.name, p.version, p.build) for p in client.packages.list(environment.id)}
    with darb.Client(api.addr) as admin:
        admin.login("admin", ADMIN_PASSWORD)
        rebuild = admin.environments.rebuild(environment.id)
        assert rebuild.type == darb.JobType.REBUILD_ENVIRONMENT
        assert admin.jobs.wait(rebuild.id, timeout=WAIT).status == darb.JobStatus.COMPLETED
        # To the agent it is on: rebuilt in place, nothing freed.
        move = admin.environments.move(environment.id, agent.addr)
        assert move.type == darb.JobType.MOVE_ENVIRONMENT
        assert admin.jobs.wait(move.id, timeout=WAIT).status == darb.JobStatus.COMPLETED
        with pytest.raises(darb.errors.InvalidArgument):
            admin.environments.move(environment.id, "127.0.0.1:1")
    [version] = list(client.environments.versions(environment.id))
    assert version.rebuild_count == 2 and version.rebuilt_at is not None
    assert {(p.name, p.version, p.build) for p in client.packages.list(environment.id)} == before
    assert client.environments.get(environment.id).status == darb.EnvironmentStatus.READY
    with pytest.raises(darb.errors.PermissionDenied):
        client.environments.rebuild(environment.id)
