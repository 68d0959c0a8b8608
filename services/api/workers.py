"""More processes serving the control plane's RPCs on one port (``DARB_API_PROCESSES``).

One Python process tops out near one core, most of it in gRPC and asyncio machinery.
With ``DARB_API_PROCESSES=N`` the primary process (migrations, dispatcher, agent
monitor, metrics endpoint) starts N-1 RPC workers that bind the same address: gRPC
sets SO_REUSEPORT on Linux, so the kernel spreads client connections over all N.
Workers share nothing but PostgreSQL: their commits NOTIFY the primary's dispatcher,
cancels reach it the same way, and their watchers read new lines from the table when
poked (lines travel in memory only within the process that runs the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from shared.subprocesses import die_with_parent

WORKER_FLAG = "--rpc-worker"
READY_TIMEOUT = 60.0


class WorkerFailed(RuntimeError):
    pass


def _command() -> list[str]:
    """``python -m services.api --rpc-worker``, killed by the kernel if we die (Linux)."""
    return die_with_parent([sys.executable, "-m", "services.api", WORKER_FLAG], "TERM")


async def start_workers(
    count: int, addr: str, database_url: str
) -> list[asyncio.subprocess.Process]:
    """Starts ``count`` workers on ``addr`` (a resolved ``host:port``) and the primary's
    database (the embedded server's URL, when it runs one) and returns once each has
    printed its ready line; their logs go to our stderr."""
    env = {**os.environ, "DARB_API_ADDR": addr, "DARB_DATABASE_URL": database_url}
    workers = []
    try:
        for _ in range(count):
            worker = await asyncio.create_subprocess_exec(
                *_command(),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )
            workers.append(worker)
        for worker in workers:
            assert worker.stdout is not None
            ready = await asyncio.wait_for(worker.stdout.readline(), READY_TIMEOUT)
            if not ready:
                raise WorkerFailed(f"an RPC worker exited with {await worker.wait()} at start")
    except BaseException:
        await stop_workers(workers, grace=5.0)
        raise
    return workers


async def stop_workers(workers: list[asyncio.subprocess.Process], grace: float) -> None:
    """SIGTERM (each stops like the primary, within its grace), then SIGKILL the late."""
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)
    waits = [asyncio.create_task(worker.wait()) for worker in workers]
    if not waits:
        return
    _, late = await asyncio.wait(waits, timeout=grace + 5.0)
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
    if late:
        await asyncio.wait(late)
