"""The seed's manual flow through the API, on PostgreSQL with the real agent."""

from __future__ import annotations

import grpc
import pytest

from darb.errors import refused_field
from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from testkit.control_plane import ApiProcess, Client


def test_create_install_remove_export_delete(api: ApiProcess) -> None:
    client = api.new_user()
    created = client.create("demo", ["acme-core ==1.0"])
    assert created.environment.status == common_pb2.ENVIRONMENT_STATUS_PENDING
    assert created.job.type == common_pb2.JOB_TYPE_CREATE_ENVIRONMENT
    env_id = created.environment.id

    job = client.wait(created.job.id)
    assert job.status == common_pb2.JOB_STATUS_COMPLETED, job.error
    assert job.logs and job.started_at.seconds and job.completed_at.seconds
    _views_of(client, job)
    assert client.get_env(env_id).status == common_pb2.ENVIRONMENT_STATUS_READY
    assert client.packages(env_id) == {"acme-core": "1.0"}

    job = client.wait(client.install(env_id, ["acme-utils"]).id)
    assert job.status == common_pb2.JOB_STATUS_COMPLETED, job.error
    assert client.packages(env_id) == {"acme-core": "1.0", "acme-utils": "1.0"}

    export = client.call(
        client.envs.ExportEnvironment, environments_pb2.ExportEnvironmentRequest(id=env_id)
    )
    assert "acme-utils" in export.manifest and "acme-utils" in export.lockfile

    job = client.wait(client.remove(env_id, ["acme-utils"]).id)
    assert job.status == common_pb2.JOB_STATUS_COMPLETED, job.error
    assert client.packages(env_id) == {"acme-core": "1.0"}

    delete = client.call(
        client.envs.DeleteEnvironment, environments_pb2.DeleteEnvironmentRequest(id=env_id)
    )
    assert client.wait(delete.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    with pytest.raises(grpc.RpcError) as info:
        client.get_env(env_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _views_of(client: Client, job: common_pb2.Job) -> None:
    """GetJob's views: FULL (and UNSPECIFIED, the default) with the log, BASIC the same
    job without it; an unknown view is refused, naming the field."""

    def get(view: int) -> common_pb2.Job:
        request = jobs_pb2.GetJobRequest(id=job.id, view=view)
        return client.call(client.jobs.GetJob, request).job

    assert get(jobs_pb2.JOB_VIEW_FULL) == job == get(jobs_pb2.JOB_VIEW_UNSPECIFIED)
    basic = get(jobs_pb2.JOB_VIEW_BASIC)
    assert basic.logs == ""
    basic.logs = job.logs
    assert basic == job
    with pytest.raises(grpc.RpcError) as refused:
        get(7)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused_field(refused.value) == "view"
