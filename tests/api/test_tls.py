"""The control plane serves TLS when DARB_TLS_CERT/KEY are set, refuses plaintext, and
with DARB_TLS_CLIENT_CA refuses clients without a certificate signed by that CA."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darb.v1 import auth_pb2, auth_pb2_grpc
from testkit.certs import CertAuthority, Identity, make_ca
from testkit.control_plane import ADMIN_PASSWORD, ApiProcess
from testkit.postgres import fresh_database

# Refusals happen in the handshake; no tight timing depends on this.
TIMEOUT = 10


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def fresh_db() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def _tls_channel(api: ApiProcess, ca: CertAuthority, identity: Identity | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.ca.read_bytes(),
        private_key=identity.key.read_bytes() if identity else None,
        certificate_chain=identity.cert.read_bytes() if identity else None,
    )
    port = api.addr.rsplit(":", 1)[1]
    return grpc.secure_channel(f"localhost:{port}", credentials)


def _login(channel: grpc.Channel) -> str:
    request = auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD)
    return auth_pb2_grpc.AuthServiceStub(channel).Login(request, timeout=TIMEOUT).token


def _serving(channel: grpc.Channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _refused(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_serves_tls_and_refuses_plaintext(
    api_factory: Callable[..., ApiProcess], fresh_db: str, ca: CertAuthority
) -> None:
    api = api_factory(fresh_db, **ca.server_env(client_auth=False))
    channel = _tls_channel(api, ca, None)
    assert _serving(channel) and _login(channel)
    _refused(lambda: _login(grpc.insecure_channel(api.addr)))


def test_client_certificates_are_required_with_a_client_ca(
    api_factory: Callable[..., ApiProcess], fresh_db: str, ca: CertAuthority
) -> None:
    api = api_factory(fresh_db, **ca.server_env(client_auth=True))
    assert _login(_tls_channel(api, ca, ca.client))
    _refused(lambda: _login(_tls_channel(api, ca, None)))
    _refused(lambda: _login(_tls_channel(api, ca, ca.stranger)))
    _refused(lambda: _login(grpc.insecure_channel(api.addr)))
