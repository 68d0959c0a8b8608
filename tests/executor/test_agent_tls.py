"""TLS and mutual TLS on the agent: a trusted control plane gets in, everyone else is
refused before any RPC runs, and the agent token still applies inside TLS.

Certificates come from a throw-away CA (``testkit/certs.py``); the client side is
built with ``shared.tls``, the same code the control plane uses to call the agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darb.executor.v1 import executor_pb2 as pb
from darb.executor.v1 import executor_pb2_grpc
from shared.config import TlsSettings
from shared.tls import channel_credentials
from testkit.agent import AgentProcess, start_agent
from testkit.certs import CertAuthority, Identity, make_ca
from tests.executor.helpers import new_id

TOKEN = "tls-t0ken"
REFUSED = grpc.StatusCode.UNAVAILABLE  # a failed handshake never reaches the service


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mtls_agent(
    tmp_path_factory: pytest.TempPathFactory, channel_url: str, authority: CertAuthority
) -> Iterator[AgentProcess]:
    """An agent that serves TLS and requires client certificates signed by the CA."""
    data_dir = tmp_path_factory.mktemp("mtls-agent") / "data"
    with start_agent(data_dir, channel_url, token=TOKEN, extra_env=authority.server_env()) as agent:
        yield agent


def secure_channel(agent: AgentProcess, ca: Path, identity: Identity | None) -> grpc.Channel:
    """A channel that verifies the agent with ``ca`` and presents ``identity`` if given."""
    tls = TlsSettings(
        cert=identity.cert if identity else None,
        key=identity.key if identity else None,
        ca=ca,
    )
    credentials = channel_credentials(tls)
    assert credentials is not None
    return grpc.secure_channel(agent.addr, credentials)


def get_info(channel: grpc.Channel, token: str = TOKEN) -> pb.GetInfoResponse:
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    return stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=20)


def refused_status(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as error:
        get_info(channel)
    return error.value.code()  # type: ignore[no-any-return]


def test_a_client_with_a_trusted_certificate_and_the_token_is_served(mtls_agent, authority):
    with secure_channel(mtls_agent, authority.ca, authority.client) as channel:
        assert get_info(channel).engine == "builtin"
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        request = pb.CreateEnvironmentRequest(
            environment_id=new_id(), name="tls", packages=["acme-core"]
        )
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        messages = list(stub.CreateEnvironment(request, metadata=metadata, timeout=120))
    assert messages[-1].result.success, messages[-1].result.error


def test_a_plaintext_client_is_refused(mtls_agent):
    assert refused_status(grpc.insecure_channel(mtls_agent.addr)) == REFUSED


def test_a_client_without_a_certificate_is_refused(mtls_agent, authority):
    assert refused_status(secure_channel(mtls_agent, authority.ca, None)) == REFUSED


def test_a_certificate_from_another_ca_is_refused(mtls_agent, authority):
    assert refused_status(secure_channel(mtls_agent, authority.ca, authority.stranger)) == REFUSED


def test_a_client_that_does_not_trust_the_agent_refuses_it(mtls_agent, authority):
    """The other direction: the control plane verifies the agent's certificate too."""
    other_ca = authority.stranger.cert.parent / "other-ca.crt"
    assert refused_status(secure_channel(mtls_agent, other_ca, authority.client)) == REFUSED


def test_the_token_still_applies_over_tls(mtls_agent, authority):
    with secure_channel(mtls_agent, authority.ca, authority.client) as channel:
        for token in ("wrong", ""):
            with pytest.raises(grpc.RpcError) as error:
                get_info(channel, token)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_refusals_leave_the_agent_serving(mtls_agent, authority):
    for _ in range(3):
        refused_status(grpc.insecure_channel(mtls_agent.addr))
        refused_status(secure_channel(mtls_agent, authority.ca, authority.stranger))
    with secure_channel(mtls_agent, authority.ca, authority.client) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=20
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert get_info(channel).engine == "builtin"


def test_tls_without_a_client_ca_serves_clients_without_certificates(agent_factory, authority):
    agent = agent_factory(token=TOKEN, **authority.server_env(client_auth=False))
    with secure_channel(agent, authority.ca, None) as channel:
        assert get_info(channel).engine == "builtin"
    assert refused_status(grpc.insecure_channel(agent.addr)) == REFUSED
