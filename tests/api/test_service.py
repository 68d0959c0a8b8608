"""The process as a whole: health, reflection, config, restarts, schema."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import create_engine

from darb.v1 import common_pb2
from services.api.database.db import Database
from services.api.database.migrate import migrate
from services.api.repo.models import Base
from shared.config import DEV_ADMIN_PASSWORD, ApiSettings, ConfigError
from testkit.agent import AgentProcess
from testkit.control_plane import ApiProcess
from testkit.postgres import fresh_database


def test_health_and_reflection(api: ApiProcess) -> None:
    channel = grpc.insecure_channel(api.addr)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "darb.v1.EnvironmentService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in response.list_services_response.service}
    assert {
        "darb.v1.AuthService",
        "darb.v1.UserService",
        "darb.v1.EnvironmentService",
        "darb.v1.JobService",
        "grpc.health.v1.Health",
    } <= names


def test_health_is_not_serving_while_the_database_is_gone(
    api_factory: Callable[..., ApiProcess],
) -> None:
    with fresh_database() as url:
        api = api_factory(url)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(api.addr))
        assert health.Check(health_pb2.HealthCheckRequest()).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
    # fresh_database dropped it; calls answer UNAVAILABLE, never INTERNAL.
    deadline = time.monotonic() + 20
    while health.Check(health_pb2.HealthCheckRequest()).status == (
        health_pb2.HealthCheckResponse.SERVING
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as info:
        api.admin()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "SELECT" not in (info.value.details() or "")


def test_jobs_left_running_by_a_dead_control_plane_fail_on_the_next_start(
    api_factory: Callable[..., ApiProcess], shared_agent: AgentProcess
) -> None:
    with fresh_database() as url:
        first = api_factory(url, DARB_JOB_LEASE="1")
        client = first.new_user()
        shared_agent.evict_cached("acme-big")
        created = client.create("orphan", ["acme-big"])
        deadline = time.monotonic() + 60
        while client.get_job(created.job.id).status != common_pb2.JOB_STATUS_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.stop(signal.SIGKILL)
        time.sleep(1.5)  # let the lease run out
        second = api_factory(url, DARB_JOB_LEASE="1")
        client = second.login(client.user.username, "password-1")
        job = client.get_job(created.job.id)
        assert job.status == common_pb2.JOB_STATUS_FAILED
        assert "lease expired" in job.error
        environment = client.get_env(created.environment.id)
        assert environment.status == common_pb2.ENVIRONMENT_STATUS_FAILED
        second.stop()


def test_migrations_match_the_models_and_schema_sql_is_applied() -> None:
    with fresh_database() as url:
        database = Database(url)
        asyncio.run(migrate(database))
        asyncio.run(migrate(database))  # again, as every start does: nothing changes
        asyncio.run(database.close())
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
                functions = conn.exec_driver_sql(
                    "SELECT proname FROM pg_proc WHERE proname LIKE 'darb%%' ORDER BY 1"
                ).scalars()
                triggers = conn.exec_driver_sql(
                    "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
                ).scalars()
                assert list(functions) == [
                    "darb_create_environment",
                    "darb_environment_changed",
                    "darb_finish_job",
                ]
                assert list(triggers) == ["environment_changed"]
        finally:
            engine.dispose()
    assert diff == []


def test_settings_refuse_to_start_without_an_admin_password() -> None:
    with pytest.raises(ConfigError, match="DARB_ADMIN_PASSWORD"):
        ApiSettings.from_env({})
    settings = ApiSettings.from_env({"DARB_DEV_DEFAULTS": "1"})
    assert settings.admin_password == DEV_ADMIN_PASSWORD
    assert settings.admin_password_is_dev_default
    settings = ApiSettings.from_env(
        {"DARB_ADMIN_PASSWORD": "s3cret-pw", "DARB_EXECUTORS": "a:1,b:2"}
    )
    assert settings.executors == ("a:1", "b:2") and not settings.admin_password_is_dev_default
    assert settings.addr == "127.0.0.1:50051"
