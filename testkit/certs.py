"""A throw-away certificate authority for TLS tests, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertAuthority:
    """A CA and identities it signed: ``server`` for 127.0.0.1/localhost, ``client``."""

    ca: Path
    server: Identity
    client: Identity
    stranger: Identity  # signed by another CA: must be refused

    def server_env(self, client_auth: bool = True) -> dict[str, str]:
        """DARB_TLS_* for a service that serves TLS (and requires client certs)."""
        env = {"DARB_TLS_CERT": str(self.server.cert), "DARB_TLS_KEY": str(self.server.key)}
        if client_auth:
            env["DARB_TLS_CLIENT_CA"] = str(self.ca)
        return env


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _authority(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def _issue(directory: Path, name: str, authority: tuple[Path, Path]) -> Identity:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(authority[0]),
        "-CAkey",
        str(authority[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(extensions),
        "-out",
        str(cert),
    )
    return Identity(cert, key)


def make_ca(directory: Path) -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    authority = _authority(directory, "darb-test-ca")
    other = _authority(directory, "other-ca")
    return CertAuthority(
        ca=authority[0],
        server=_issue(directory, "server", authority),
        client=_issue(directory, "client", authority),
        stranger=_issue(directory, "stranger", other),
    )
