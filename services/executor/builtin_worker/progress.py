"""Structured progress of an operation: its phase and packages and bytes done of total.

The worker has only its stdout to talk to the agent, so a report is one line there that
starts with ``MARK`` (a character no log line of the worker starts with) followed by
JSON; the builtin engine takes these lines out of the log (``parse``). They share the
log's buffer, so they keep their place among the lines. Reports are throttled to one
per ``INTERVAL``; a change of phase, and the last report of the operation (``flush``),
always go out.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from enum import IntEnum

from services.executor.builtin_worker.output import log

MARK = "\x1edarb-progress "
INTERVAL = 0.25


class Phase(IntEnum):
    """Values match darb.executor.v1.OperationPhase (and darb.v1.JobPhase)."""

    SOLVING = 1
    DOWNLOADING = 2
    LINKING = 3
    WRITING_LOCK = 4
    REMOVING = 5


@dataclass(frozen=True)
class Report:
    phase: int
    packages_done: int = 0
    packages_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    time_ns: int = 0


def parse(text: str) -> Report | None:
    """The report a worker's output line carries, None for a log line."""
    if not text.startswith(MARK):
        return None
    try:
        return Report(**json.loads(text[len(MARK) :]))
    except (ValueError, TypeError):
        return None


class Progress:
    """The reports of one operation; rattler's callbacks call ``report`` from several
    threads at once, hence the lock."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._sent: Report | None = None
        self._sent_at = 0.0
        self._pending: Report | None = None

    def report(
        self,
        phase: Phase,
        packages: tuple[int, int] = (0, 0),
        nbytes: tuple[int, int] = (0, 0),
    ) -> None:
        report = Report(int(phase), *packages, *nbytes, time.time_ns())
        with self._lock:
            now = time.monotonic()
            changed = self._sent is None or self._sent.phase != report.phase
            if changed and self._pending is not None:
                self._write(self._pending)  # the phase's last state before the next phase
            if changed or now - self._sent_at >= self._interval:
                self._write(report)
                self._sent_at = now
            else:
                self._pending = report

    def flush(self) -> None:
        """Send the last report if the throttle held it back."""
        with self._lock:
            if self._pending is not None:
                self._write(self._pending)

    def _write(self, report: Report) -> None:
        self._sent, self._pending = report, None
        log(MARK + json.dumps(asdict(report), separators=(",", ":")))


# The operation's reports: one operation per worker process.
PROGRESS = Progress()
