"""PostgreSQL restarted under a working control plane, for real: on a private server
(``testkit/pg_server.py``), since the run's shared one serves every other test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darb.v1 import common_pb2
from services.api.database.embedded import EmbeddedPostgres
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess
from testkit.pg_server import private_postgres
from tests.api.faults import install_engine_pid, ready_environment, wait_until

SLACK = 60
OUTAGE = 5


@pytest.fixture
def postgres() -> Iterator[EmbeddedPostgres]:
    """A private server: the run's shared one is never restarted."""
    with private_postgres() as server:
        yield server


def health(api: ApiProcess) -> int:
    with grpc.insecure_channel(api.addr) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_postgres_restart_loses_nothing(
    postgres: EmbeddedPostgres,
    api_factory: Callable[..., ApiProcess],
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """A fast shutdown of the database (every session ended) while one job runs and two
    are queued: health goes NOT_SERVING, the running job's lines and end are kept until
    the database is back, health returns to SERVING, and every job completes, including
    those submitted after the restart."""
    agent = agent_factory()
    api = api_factory(postgres.url, executors=agent.addr, DARB_WORKER_CONCURRENCY="1")
    client = api.new_user()
    busy_env = ready_environment(client, "busy", ["acme-core"])
    queued_env = ready_environment(client, "queued", ["acme-core"])
    running = client.install(busy_env, ["acme-big"])
    install_engine_pid(client, running.id)
    queued = [client.install(queued_env, ["acme-utils"]), client.create("late", ["acme-tool"]).job]

    postgres.stop()  # a fast shutdown: every session ends
    wait_until(
        lambda: health(api) == health_pb2.HealthCheckResponse.NOT_SERVING, SLACK, "NOT_SERVING"
    )
    time.sleep(OUTAGE)  # the install goes on; its lines and its end wait for the database
    postgres.start()
    wait_until(lambda: health(api) == health_pb2.HealthCheckResponse.SERVING, SLACK, "SERVING")
    # The direct psycopg path (GetEnvironment, creates) replaces its broken connections
    # before use: the first calls after the restart succeed.
    assert client.get_env(busy_env).id == busy_env
    queued.append(client.create("after-restart", ["acme-tool"]).job)

    finished = client.wait(running.id, timeout=SLACK)
    assert finished.status == common_pb2.JOB_STATUS_COMPLETED, finished.error
    assert "acme-big" in finished.logs
    for job in queued:
        assert client.wait(job.id, timeout=SLACK).status == common_pb2.JOB_STATUS_COMPLETED
    after = client.install(queued_env, ["acme-extras"])
    assert client.wait(after.id, timeout=SLACK).status == common_pb2.JOB_STATUS_COMPLETED
    assert {"acme-big", "acme-core"} <= set(client.packages(busy_env))
