"""Assemble and run the agent's gRPC server: service, health, reflection, auth."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from rattler import Platform

from darb.executor.v1 import disk_pb2, disk_pb2_grpc, executor_pb2, executor_pb2_grpc
from services.executor.auth import AgentTokenInterceptor
from services.executor.disk import DiskKeeper
from services.executor.disk_service import DiskServicer
from services.executor.engines import available_engines
from services.executor.engines.base import Engine
from services.executor.engines.builtin import BuiltinEngine
from services.executor.engines.pixi_cli import PixiCliEngine
from services.executor.identity import data_identity
from services.executor.servicer import ExecutorServicer
from services.executor.workspace import DataLayout
from shared.config import ExecutorSettings
from shared.lifecycle import exit_after, settle_heap, stop_on_signals
from shared.tls import add_port

log = logging.getLogger(__name__)
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
DISK_SERVICE_NAME = disk_pb2.DESCRIPTOR.services_by_name["DiskService"].full_name
SHUTDOWN_GRACE_SECONDS = 5.0
# After the grace, what the repairs of the operations stopped then get (ExecutorServicer.stop).
REPAIR_SECONDS = 2.0
# Stopping never takes longer than this after the stop signal: then the process exits anyway.
EXIT_DEADLINE_SECONDS = SHUTDOWN_GRACE_SECONDS + 4.0


def build_engines(layout: DataLayout, platform: str) -> tuple[BuiltinEngine, dict[str, Engine]]:
    builtin = BuiltinEngine(layout, platform)
    engines: dict[str, Engine] = {"builtin": builtin}
    pixi = available_engines().get("cli")
    if pixi:
        engines["cli"] = PixiCliEngine(layout, pixi, builtin)
    return builtin, engines


def choose_engine(setting: str, engines: dict[str, Engine]) -> str:
    """``auto`` prefers pixi when it is installed; an explicit choice is kept as is."""
    if setting == "auto":
        return "cli" if "cli" in engines else "builtin"
    return setting


async def serve(settings: ExecutorSettings) -> None:
    stop = stop_on_signals()
    layout = DataLayout(settings.data_dir)
    layout.prepare()
    data_id = data_identity(layout.data_dir)
    platform = str(Platform.current())
    builtin, engines = build_engines(layout, platform)
    builtin.start()
    engine_name = choose_engine(settings.engine, engines)
    disk = DiskKeeper(layout, settings.disk)
    servicer = ExecutorServicer(
        settings, layout, platform, disk.gated(engines), engine_name, disk, data_id
    )
    interceptors = [AgentTokenInterceptor(settings.token)] if settings.token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", settings.max_message_bytes)],
    )
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, server)
    disk_pb2_grpc.add_DiskServiceServicer_to_server(DiskServicer(disk), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, DISK_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    host = settings.addr.rsplit(":", 1)[0]
    port = add_port(server, settings.addr, settings.tls)
    await server.start()
    disk.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    settle_heap()
    # Tests and scripts read this line to learn the port when DARB_EXECUTOR_ADDR ends in :0.
    print(f"darb executor listening on {host}:{port}", flush=True)
    log.info(
        "engine %s, platform %s, data in %s (identity %s)",
        engine_name,
        platform,
        settings.data_dir,
        data_id,
    )
    await stop.wait()
    exit_after(EXIT_DEADLINE_SECONDS)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    await servicer.stop(REPAIR_SECONDS)
    await disk.stop()
    await builtin.close()
