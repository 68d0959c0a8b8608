"""A real darb stack for the benchmarks: a fresh PostgreSQL database, executor agents and
one control plane, each its own process on loopback, plus the async clients that load it.

The stack is built from the same helpers as the test suite, so the benchmarks exercise
exactly what ``make test`` starts; only the limits are raised, so that quotas meant to
protect users from each other never cut a benchmark's load short.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg

from darb.executor.v1 import executor_pb2_grpc
from darb.v1 import environments_pb2_grpc, groups_pb2_grpc, jobs_pb2_grpc, users_pb2
from services.api.auth.tokens import token_hash
from testkit.agent import AgentProcess, start_agent
from testkit.control_plane import ApiProcess, api_env, start_api
from testkit.postgres import fresh_database, libpq_url

AGENT_TOKEN = "bench-agent-token"
USER_PASSWORD = "bench-password-1"
WORKER_CONCURRENCY = 4
# Quotas and limits of shared/config.py, raised far beyond any benchmark's load.
GENEROUS_LIMITS = {
    "DARB_MAX_ACTIVE_JOBS_PER_USER": "1000000",
    "DARB_MAX_ENVIRONMENTS_PER_USER": "1000000",
    "DARB_MAX_PACKAGES_PER_REQUEST": "10000",
    "DARB_MAX_LOG_LINES_PER_JOB": "100000000",
    "DARB_MAX_MESSAGE_BYTES": str(64 * 1024 * 1024),
}
# Separate connections per client, as real clients would have: without this option,
# gRPC shares one subchannel between channels opened with the same arguments.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class Stack:
    """A running stack; ``database_url`` is the benchmark's own database."""

    database_url: str
    api: ApiProcess
    agents: list[AgentProcess]
    scratch: Path
    processes: int = 1  # DARB_API_PROCESSES

    @property
    def api_pid(self) -> int:
        return self.api.process.pid

    def sql(self) -> psycopg.Connection:
        """A direct connection to the stack's database, for setup and for reading timings."""
        return psycopg.connect(libpq_url(self.database_url), autocommit=True)

    def new_users(self, count: int) -> list[tuple[str, str]]:
        """``count`` fresh accounts, each as its id and a login token."""
        admin = self.api.admin()
        accounts = []
        for _ in range(count):
            username = f"bench{uuid.uuid4().hex[:12]}"
            request = users_pb2.CreateUserRequest(username=username, password=USER_PASSWORD)
            admin.call(admin.users.CreateUser, request)
            client = self.api.login(username, USER_PASSWORD)
            client.channel.close()
            accounts.append((client.user.id, client.token))
        admin.channel.close()
        return accounts

    def insert_users(self, count: int) -> list[str]:
        """Tokens of ``count`` accounts inserted with SQL (no password hashing: many
        users, quickly), each valid for a day."""
        tokens = [secrets.token_urlsafe(32) for _ in range(count)]
        users = [(str(uuid.uuid4()), f"bench{uuid.uuid4().hex[:12]}") for _ in tokens]
        with self.sql() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO users (id, username, password_hash, is_admin, created_at, disabled)"
                " VALUES (%s, %s, '!', false, now(), false)",
                users,
            )
            cursor.executemany(
                "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at)"
                " VALUES (%s, %s, now(), now() + interval '1 day')",
                [(token_hash(t), user_id) for t, (user_id, _) in zip(tokens, users, strict=True)],
            )
        return tokens


def unused_address() -> str:
    """A loopback address nothing listens on (for a control plane that must not run jobs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@contextlib.contextmanager
def running_stack(
    scratch: Path,
    channel_url: str,
    *,
    agents: int = 1,
    agent_env: dict[str, str] | None = None,
    executors: str | None = None,
    api_settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Starts PostgreSQL database, ``agents`` agents and a control plane; stops all after.

    ``executors`` overrides the agent list the control plane sends jobs to.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        database_url = cleanup.enter_context(fresh_database())
        started = [
            cleanup.enter_context(_agent(scratch / f"agent-{index}", channel_url, agent_env))
            for index in range(agents)
        ]
        targets = executors or ",".join(agent.addr for agent in started)
        settings = {
            **GENEROUS_LIMITS,
            "DARB_WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            **(api_settings or {}),
        }
        env = api_env(database_url, scratch / "api", targets, AGENT_TOKEN, channel_url, **settings)
        api = start_api(env, scratch / "api.log")
        cleanup.callback(api.stop)
        processes = int(settings.get("DARB_API_PROCESSES", "1"))
        yield Stack(database_url, api, started, scratch, processes)


def _agent(data_dir: Path, channel_url: str, extra: dict[str, str] | None) -> AgentProcess:
    env = {**GENEROUS_LIMITS, **(extra or {})}
    return start_agent(data_dir, channel_url, token=AGENT_TOKEN, extra_env=env)


class AioClient:
    """One client connection (its own HTTP/2 connection) with the stubs the benchmarks use."""

    def __init__(self, addr: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(addr, options=OWN_CONNECTION)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.envs = environments_pb2_grpc.EnvironmentServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.groups = groups_pb2_grpc.GroupServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class AioAgent:
    """A direct connection to one agent, for the agent-only comparisons."""

    def __init__(self, addr: str) -> None:
        self.channel = grpc.aio.insecure_channel(addr, options=OWN_CONNECTION)
        self.metadata = (("authorization", f"Bearer {AGENT_TOKEN}"),)
        self.stub = executor_pb2_grpc.ExecutorServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
