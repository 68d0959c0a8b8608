"""Clean stops for both services."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM. Installed before a service starts to serve, so a
    signal that arrives right after the ready line (or during start-up) is a clean stop,
    never the default action that kills the process mid-way."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
