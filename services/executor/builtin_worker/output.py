"""The worker's output: progress lines on stdout, warnings and errors on stderr, written
in batches by a flusher thread."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# Output lines wait here at most FLUSH_INTERVAL before they go out in one write: a pipe
# write and a wake-up of the agent per line cost more than the line itself when a few
# hundred packages link in a fraction of a second, and 10 ms is still live for a reader.
FLUSH_INTERVAL = 0.01
# rattler calls the install reporter from several threads at once, hence the lock.
_OUTPUT_LOCK = threading.Lock()
_PENDING: dict[TextIO, list[str]] = {}


def _write_line(stream: TextIO, message: str) -> None:
    with _OUTPUT_LOCK:
        _PENDING.setdefault(stream, []).append(f"{message}\n")


def flush_output() -> None:
    """Write every pending line; called by the flusher thread and once at exit."""
    with _OUTPUT_LOCK:
        for stream, lines in _PENDING.items():
            if lines:
                stream.write("".join(lines))
                stream.flush()
                lines.clear()


def flush_periodically() -> None:
    while True:
        time.sleep(FLUSH_INTERVAL)
        flush_output()


def log(message: str) -> None:
    """One progress line for the user, streamed within FLUSH_INTERVAL."""
    _write_line(sys.stdout, message)


def warn(message: str) -> None:
    _write_line(sys.stderr, message)
