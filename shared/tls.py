"""gRPC credentials from ``TlsSettings``: one place decides between TLS and plaintext."""

from __future__ import annotations

from pathlib import Path

import grpc

from shared.config import TlsSettings


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS server credentials, requiring client certificates when ``client_ca`` is set."""
    if not tls.serves_tls:
        return None
    assert tls.key is not None and tls.cert is not None  # serves_tls: both are set
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=_read(tls.client_ca),
        require_client_auth=tls.client_ca is not None,
    )


def add_port(server: grpc.aio.Server, addr: str, tls: TlsSettings) -> int:
    """Listen on ``addr`` with TLS when configured; returns the bound port."""
    credentials = server_credentials(tls)
    if credentials is None:
        return server.add_insecure_port(addr)
    return server.add_secure_port(addr, credentials)


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials for calling another darb service: verify it with ``ca`` and present
    our own certificate; None means plaintext."""
    if tls.ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.key),
        certificate_chain=_read(tls.cert),
    )
