"""With DARB_AGENT_TOKEN set, the agent obeys only callers that present the token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darb.executor.v1 import executor_pb2 as pb
from tests.executor.helpers import new_id

CALLS = {
    "GetInfo": pb.GetInfoRequest(),
    "ListPackages": pb.ListPackagesRequest(environment_id=new_id()),
    "CreateEnvironment": pb.CreateEnvironmentRequest(
        environment_id=new_id(), name="x", packages=["acme-core"]
    ),
    "InstallPackages": pb.InstallPackagesRequest(environment_id=new_id(), packages=["a"]),
    "RemovePackages": pb.RemovePackagesRequest(environment_id=new_id(), packages=["a"]),
    "DeleteEnvironment": pb.DeleteEnvironmentRequest(environment_id=new_id()),
    "ApplyLock": pb.ApplyLockRequest(
        environment_id=new_id(), name="x", platforms=["linux-64"], lockfile="version: 6"
    ),
}


def invoke(agent, method: str, metadata) -> None:
    response = getattr(agent.stub(), method)(CALLS[method], metadata=metadata, timeout=30)
    if not isinstance(response, pb.GetInfoResponse | pb.ListPackagesResponse):
        list(response)


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", "t0ken"),),
        (("authorization", "Bearer t0ken-and-more"),),
    ],
    ids=["missing", "wrong", "no-bearer", "longer"],
)
def test_calls_without_the_right_token_are_unauthenticated(shared_agent, method, metadata):
    with pytest.raises(grpc.RpcError) as error:
        invoke(shared_agent, method, metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "t0ken" not in error.value.details()
    environments = shared_agent.data_dir / "environments"
    assert CALLS["CreateEnvironment"].environment_id not in {p.name for p in environments.iterdir()}


def test_the_right_token_is_obeyed(shared_agent):
    info = shared_agent.stub().GetInfo(pb.GetInfoRequest(), metadata=shared_agent.metadata)
    assert info.platform


def test_health_and_reflection_answer_without_a_token(shared_agent):
    with grpc.insecure_channel(shared_agent.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    grpcurl = Path(sys.executable).parent / "grpcurl"
    listed = subprocess.run(
        [str(grpcurl), "-plaintext", shared_agent.addr, "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "darb.executor.v1.ExecutorService" in listed
