"""Start ``python -m services.api`` as a real process and talk to it over gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from darb.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    environments_pb2,
    environments_pb2_grpc,
    groups_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)
from testkit.processes import launch, stop

ADMIN_PASSWORD = "admin-secret-pw"
TERMINAL = {
    common_pb2.JOB_STATUS_COMPLETED,
    common_pb2.JOB_STATUS_FAILED,
    common_pb2.JOB_STATUS_CANCELLED,
}


@dataclass
class ApiProcess:
    process: subprocess.Popen[str]
    addr: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return stop(self.process, sig, timeout)

    def client(self) -> Client:
        return Client(grpc.insecure_channel(self.addr))

    def own_connection(self, token: str) -> Client:
        """A client on a connection of its own (not shared through grpc's subchannel
        pool), which with DARB_API_PROCESSES > 1 the kernel may give any process."""
        options = [("grpc.use_local_subchannel_pool", 1)]
        return Client(grpc.insecure_channel(self.addr, options=options), token)

    def login(self, username: str, password: str) -> Client:
        client = self.client()
        client.login(username, password)
        return client

    def admin(self) -> Client:
        return self.login("admin", ADMIN_PASSWORD)

    def new_user(self, admin: bool = False) -> Client:
        """A fresh account, so tests sharing a server never see each other's data."""
        username = f"u{uuid.uuid4().hex[:12]}"
        creator = self.admin()
        request = users_pb2.CreateUserRequest(username=username, password="password-1", admin=admin)
        creator.call(creator.users.CreateUser, request)
        return self.login(username, "password-1")


def status_code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status ``call`` ends with: OK, or its RpcError's code."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def watched_lines(events: Iterable[Any]) -> Iterator[common_pb2.LogLine]:
    """The log lines of a WatchJob stream, one by one, out of their batches."""
    for event in events:
        if event.HasField("log_lines"):
            yield from event.log_lines.lines


def api_env(
    database_url: str, data_dir: Path, executors: str, token: str, channel_url: str, **extra: str
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARB_")}
    env.update(
        DARB_API_ADDR="127.0.0.1:0",
        DARB_DATABASE_URL=database_url,
        DARB_DATA_DIR=str(data_dir),
        DARB_EXECUTORS=executors,
        DARB_AGENT_TOKEN=token,
        DARB_ADMIN_USERNAME="admin",
        DARB_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DARB_DEFAULT_CHANNELS=channel_url,
        DARB_ALLOWED_CHANNELS=channel_url,
    )
    env.update(extra)
    return env


def start_api(env: dict[str, str], log_path: Path) -> ApiProcess:
    if not env.get("DARB_DATABASE_URL"):
        env = {key: value for key, value in env.items() if key != "DARB_DATABASE_URL"}
    process, addr = launch("services.api", env, log_path, append=True)
    return ApiProcess(process, addr, log_path)


@dataclass
class Client:
    """Stubs of every service, sending the token once logged in."""

    channel: grpc.Channel
    token: str = ""
    user: Any = None
    auth: auth_pb2_grpc.AuthServiceStub = field(init=False)
    users: users_pb2_grpc.UserServiceStub = field(init=False)
    envs: environments_pb2_grpc.EnvironmentServiceStub = field(init=False)
    jobs: jobs_pb2_grpc.JobServiceStub = field(init=False)
    groups: groups_pb2_grpc.GroupServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.groups = groups_pb2_grpc.GroupServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.users = users_pb2_grpc.UserServiceStub(self.channel)
        self.envs = environments_pb2_grpc.EnvironmentServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def login(self, username: str, password: str) -> None:
        response = self.auth.Login(auth_pb2.LoginRequest(username=username, password=password))
        self.token = response.token
        self.user = response.user

    def call(self, method: Any, request: Any, timeout: float = 30) -> Any:
        return method(request, metadata=self.metadata, timeout=timeout)

    def create(
        self, name: str, packages: list[str], channels: list[str] | None = None
    ) -> environments_pb2.CreateEnvironmentResponse:
        request = environments_pb2.CreateEnvironmentRequest(
            name=name, packages=packages, channels=channels or []
        )
        return self.call(self.envs.CreateEnvironment, request)

    def install(self, environment_id: str, packages: list[str]) -> common_pb2.Job:
        request = environments_pb2.InstallPackagesRequest(
            environment_id=environment_id, packages=packages
        )
        return self.call(self.envs.InstallPackages, request).job

    def remove(self, environment_id: str, packages: list[str]) -> common_pb2.Job:
        request = environments_pb2.RemovePackagesRequest(
            environment_id=environment_id, packages=packages
        )
        return self.call(self.envs.RemovePackages, request).job

    def set_policy(self, environment_id: str, members: dict[str, int], etag: str = "") -> Any:
        """Replaces the environment's policy with ``members`` (member -> darb.v1.Role)."""
        by_role: dict[int, list[str]] = {}
        for member, role in members.items():
            by_role.setdefault(role, []).append(member)
        policy = environments_pb2.Policy(
            bindings=[environments_pb2.Binding(role=r, members=m) for r, m in by_role.items()],
            etag=etag,
        )
        request = environments_pb2.SetEnvironmentPolicyRequest(
            environment_id=environment_id, policy=policy
        )
        return self.call(self.envs.SetEnvironmentPolicy, request).policy

    def get_job(self, job_id: str) -> common_pb2.Job:
        return self.call(self.jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id)).job

    def get_env(self, environment_id: str) -> common_pb2.Environment:
        request = environments_pb2.GetEnvironmentRequest(id=environment_id)
        return self.call(self.envs.GetEnvironment, request).environment

    def packages(self, environment_id: str) -> dict[str, str]:
        request = environments_pb2.ListPackagesRequest(environment_id=environment_id)
        response = self.call(self.envs.ListPackages, request)
        return {package.name: package.version for package in response.packages}

    def watch(self, job_id: str, after_seq: int = 0, timeout: float = 120) -> Iterator[Any]:
        request = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after_seq)
        return self.jobs.WatchJob(request, metadata=self.metadata, timeout=timeout)

    def wait(self, job_id: str, timeout: float = 120) -> common_pb2.Job:
        """Watches the job to its end and returns the final job with its logs."""
        last = None
        for event in self.watch(job_id, timeout=timeout):
            if event.HasField("job"):
                last = event.job
        assert last is not None and last.status in TERMINAL, last
        return self.get_job(job_id)
