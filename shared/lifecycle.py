"""Starting and stopping either service the same way."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shared.config import ConfigError
from shared.logs import configure

log = logging.getLogger(__name__)
Settings = TypeVar("Settings")
# Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM. Installed before a service starts to serve, so a
    signal that arrives right after the ready line (or during start-up) is a clean stop,
    never the default action that kills the process mid-way."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def settle_heap() -> None:
    """Called once a service has started: the objects alive then (modules, ORM mappings,
    protobuf descriptors) live as long as the process, and moving them out of the
    collector's reach spares every later collection from scanning them again. Small
    requests allocate a lot, so young collections also run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_service(
    service: str,
    load_settings: Callable[[], Settings],
    serve: Callable[[Settings], Coroutine[Any, Any, None]],
) -> int:
    """The ``python -m`` entry of a service: logging, settings, serve until stopped.

    Bad settings, or a start they make impossible, end the process with one line on
    stderr and exit code 2."""
    configure(service)
    try:
        settings = load_settings()
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"darb {service}: {exc}", file=sys.stderr)
        return 2
    return 0


def exit_after(seconds: float) -> None:
    """The backstop of a stop: if the process still runs ``seconds`` from now, whatever it
    waits for (a task that outlives its cancellation, a thread that does not return), it
    prints every thread's stack and exits with code 1."""

    def expire() -> None:
        log.error("did not stop within %gs of the signal; exiting now", seconds)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
