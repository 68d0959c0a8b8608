"""Builds and runs the control plane: database, migrations, dispatcher and gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from darb.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    environments_pb2,
    environments_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)
from services.api.auth.passwords import hash_password
from services.api.auth.tokens import TokenCache
from services.api.caches import NotifiedCache
from services.api.database.db import Database
from services.api.database.embedded import EmbeddedPostgres
from services.api.database.migrate import migrate
from services.api.events import EventBus
from services.api.handlers.admin import AdminService
from services.api.handlers.auth import AuthService
from services.api.handlers.drains import drain_at_start
from services.api.handlers.environments import EnvironmentService
from services.api.handlers.groups import GroupService
from services.api.handlers.health import DatabaseHealth
from services.api.handlers.jobs import JobService
from services.api.handlers.users import UserService
from services.api.housekeeping import Housekeeping
from services.api.metrics import (
    PROCESS_FILES,
    Exporter,
    JobObserver,
    Metrics,
    RpcMetrics,
    keep_values_in_files,
    shared_across_processes,
)
from services.api.repo import users
from services.api.scheduling.agents import AgentMonitor
from services.api.scheduling.dispatcher import FINISH_ON_SHUTDOWN, Dispatcher
from services.api.scheduling.executor_client import ExecutorClient, GrpcExecutorClient
from services.api.scheduling.rebuilds import rebuilds_on_new_disk
from services.api.state import AppState, EnvironmentCache
from services.api.workers import start_workers, stop_workers
from shared.config import ApiSettings
from shared.lifecycle import exit_after, settle_heap, stop_on_signals
from shared.tls import add_port

log = logging.getLogger("darb.api")

SERVICE_NAMES = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    environments_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    groups_pb2.DESCRIPTOR.services_by_name["GroupService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
]
STARTUP_DB_WAIT = 30.0
# Beyond the grace and the recording of handed-back jobs, what a stop may take (the
# embedded server's fast shutdown, closing connections) before the backstop ends it.
STOP_MARGIN = 5.0
# GetEnvironment answers: the TTL only bounds how long a lost notification goes unseen.
ENVIRONMENT_TTL = 5.0
ENVIRONMENT_ENTRIES = 10_000


@dataclass
class JobRunner:
    """The parts that run jobs; only the primary process has them (see ``workers``)."""

    dispatcher: Dispatcher
    client: ExecutorClient
    agents: AgentMonitor
    exporter: Exporter | None
    # Log retention and the disk gauges (``housekeeping``).
    housekeeping: Housekeeping | None = None

    async def stop(self, grace: float) -> None:
        if self.housekeeping is not None:
            await self.housekeeping.stop()
        await self.dispatcher.drain(grace)
        await self.agents.stop()
        if self.exporter is not None:
            await self.exporter.stop()
        await self.client.close()


@dataclass
class ControlPlane:
    server: grpc.aio.Server
    port: int
    db: Database
    bus: EventBus
    runner: JobRunner | None
    health: DatabaseHealth
    health_task: asyncio.Task[None]
    grace: float

    def log_stats(self) -> None:
        """What a leak would grow, logged on SIGUSR1 and at shutdown (the fault tests read
        it to show that disconnected watchers leave nothing behind)."""
        log.info(
            "darb api stats: %d watch subscriptions, %d asyncio tasks, %d running jobs",
            self.bus.subscription_count,
            len(asyncio.all_tasks()),
            self.runner.dispatcher.running_count if self.runner else 0,
        )

    async def stop(self) -> None:
        """Graceful shutdown within ``grace`` seconds (plus recording handed-back jobs):
        no job is claimed from the first step on; running jobs and RPCs get the grace,
        then the jobs still running are handed back (see ``Dispatcher.drain``)."""
        self.log_stats()
        if self.runner is not None:
            await self.runner.dispatcher.stop_claiming()
        self.health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.health_task
        await self.health.shutting_down()
        stopping = [self.server.stop(self.grace)]
        if self.runner is not None:
            stopping.append(self.runner.stop(self.grace))
        await asyncio.gather(*stopping)
        await self.bus.stop()
        await self.db.close()


def stop_deadline(settings: ApiSettings) -> float:
    """Seconds from the stop signal after which the process exits whatever it waits for:
    the grace, recording the jobs handed back, and a margin."""
    return settings.shutdown_grace + FINISH_ON_SHUTDOWN + STOP_MARGIN


async def _prepare_database(db: Database, settings: ApiSettings) -> None:
    """Migrates (waiting a little for a database that is still starting) and creates the
    first admin."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_DB_WAIT
    while True:
        try:
            await migrate(db)
            break
        except Exception as exc:
            if loop.time() > deadline:
                raise
            log.warning("database not ready (%s); retrying", type(exc).__name__)
            await asyncio.sleep(1)
    password_hash = await hash_password(settings.admin_password)
    if await db.run(users.ensure_admin, settings.admin_username, password_hash):
        log.info("created admin user %r", settings.admin_username)
        if settings.admin_password_is_dev_default:
            log.warning(
                "admin password is the development default (see `make run`);"
                " set DARB_ADMIN_PASSWORD for any other use"
            )


async def _start_runner(
    settings: ApiSettings, db: Database, bus: EventBus, metrics: Metrics
) -> JobRunner:
    client = GrpcExecutorClient(settings.agent_token, settings.tls)
    # Before any job is claimed: a bad DARB_METRICS_ADDR (or a taken port) fails the start.
    exporter = Exporter(metrics, db) if settings.metrics_addr else None
    if exporter is not None:
        exporter.start(settings.metrics_addr)
    agents = AgentMonitor(
        client,
        settings.executors,
        settings.agent_lease,
        metrics,
        on_identity=rebuilds_on_new_disk(db, bus),
    )
    await agents.start()
    dispatcher = Dispatcher(
        db,
        bus,
        client,
        agents,
        concurrency=settings.worker_concurrency,
        poll_interval=settings.poll_interval,
        lease=settings.job_lease,
        job_timeout=settings.job_timeout,
        log_limits=settings.limits,
        metrics=metrics,
        draining=settings.drain,
    )
    await dispatcher.start()
    housekeeping = Housekeeping(settings, db, metrics if exporter is not None else None)
    housekeeping.start()
    return JobRunner(dispatcher, client, agents, exporter, housekeeping=housekeeping)


def _rpc_server(state: AppState, metrics: Metrics) -> tuple[grpc.aio.Server, DatabaseHealth]:
    settings = state.settings
    server = grpc.aio.server(
        interceptors=[RpcMetrics(metrics)],
        options=[("grpc.max_receive_message_length", settings.limits.max_message_bytes)],
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthService(state), server)
    users_pb2_grpc.add_UserServiceServicer_to_server(UserService(state), server)
    environments_pb2_grpc.add_EnvironmentServiceServicer_to_server(
        EnvironmentService(state), server
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(state), server)
    groups_pb2_grpc.add_GroupServiceServicer_to_server(GroupService(state), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(state), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return server, DatabaseHealth(health_servicer, state.db, SERVICE_NAMES)


def _environment_cache(bus: EventBus) -> EnvironmentCache:
    """GetEnvironment's answers. An environment's entry goes as soon as its row changes:
    at once for this process's own commits, by the trigger's NOTIFY for any other."""
    cache: EnvironmentCache = NotifiedCache(ENVIRONMENT_TTL, ENVIRONMENT_ENTRIES)

    def changed(environment_id: str | None) -> None:
        if environment_id is None:
            cache.clear()
        else:
            cache.forget(environment_id)

    bus.on_environment_changed(changed)
    bus.on_listening(cache.set_enabled)
    return cache


async def start(settings: ApiSettings, *, rpc_worker: bool = False) -> ControlPlane:
    """The primary process, or with ``rpc_worker`` one that only serves RPCs."""
    db = Database(settings.database_url)
    if not rpc_worker:
        await _prepare_database(db, settings)
    bus = EventBus(db)
    tokens = TokenCache()
    bus.on_user_changed(tokens.forget_user)
    bus.on_listening(tokens.set_enabled)
    environments = _environment_cache(bus)
    # A user's groups changed: their roles, cached by GetEnvironment, may have too.
    bus.on_user_changed(lambda user_id: environments.forget_where(lambda e: user_id in e.roles))
    await bus.start()
    # Only the primary serves /metrics; with several processes it adds up theirs.
    metrics = Metrics()
    runner = None if rpc_worker else await _start_runner(settings, db, bus, metrics)
    state = AppState(settings, db, bus, tokens, environments, JobObserver(metrics))
    server, database_health = _rpc_server(state, metrics)
    await database_health.check(timeout=5.0)
    port = add_port(server, settings.addr, settings.tls)
    await server.start()
    if not rpc_worker:
        await drain_at_start(state)  # DARB_DRAIN
    health_task = asyncio.create_task(database_health.watch(interval=2.0))
    return ControlPlane(
        server, port, db, bus, runner, database_health, health_task, settings.shutdown_grace
    )


async def serve(settings: ApiSettings) -> None:
    """Runs until SIGINT or SIGTERM, then stops jobs and the server cleanly (and the
    embedded database server last, when it runs one)."""
    stop = stop_on_signals()
    with (
        shared_across_processes(settings.processes, bool(settings.metrics_addr)),
        _database(settings) as settings,
    ):
        await _serve_primary(settings, stop)


@contextlib.contextmanager
def _database(settings: ApiSettings) -> Iterator[ApiSettings]:
    """``settings`` with the embedded server's URL if none is set: the server is started
    here, in the main thread, whose end is the parent death it listens for."""
    if settings.database_url:
        yield settings
        return
    server = EmbeddedPostgres.in_data_dir(settings.data_dir)
    url = server.start()
    try:
        yield dataclasses.replace(settings, database_url=url)
    finally:
        server.stop()


async def _serve_primary(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Starts the primary and its RPC workers, and stops them all once ``stop`` is set."""
    plane = await start(settings)
    host = settings.addr.rsplit(":", 1)[0]
    addr = f"{host}:{plane.port}"
    try:
        rpc_workers = await start_workers(settings.processes - 1, addr, settings.database_url)
    except BaseException:
        await plane.stop()
        raise
    settle_heap()
    # The first line on stdout, which tests and scripts wait for (the agent does the same).
    print(f"darb api listening on {addr}", flush=True)
    log.info(
        "executors: %s; %d processes serve RPCs", ",".join(settings.executors), settings.processes
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, plane.log_stats)
    await stop.wait()
    log.info("shutting down")
    exit_after(stop_deadline(settings))
    await asyncio.gather(plane.stop(), stop_workers(rpc_workers, settings.shutdown_grace))


async def serve_rpc_worker(settings: ApiSettings) -> None:
    """One of the extra RPC processes (see ``workers``): no migrations, no jobs."""
    stop = stop_on_signals()
    if directory := os.environ.get(PROCESS_FILES):  # the primary exports our metrics too
        keep_values_in_files(directory)
    plane = await start(settings, rpc_worker=True)
    settle_heap()
    print(f"darb api worker {os.getpid()} listening on {settings.addr}", flush=True)
    await stop.wait()
    exit_after(stop_deadline(settings))
    await plane.stop()
