"""How long ``make run``'s control plane takes to serve on the embedded PostgreSQL."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from benchmarks.stats import Row
from testkit.control_plane import api_env, start_api

ROUNDS = 5
METHOD = (
    "the control plane started as `make run` starts it (no DARB_DATABASE_URL), once on an"
    " empty data directory (initdb included), then {rounds} times on the warm one, each"
    " stopped with SIGTERM before the next. Two times per start: the embedded server's own"
    ' (its "ready in" log line: start, connect, database check) and the control plane\'s,'
    " from the launch of its process to its ready line (Python imports, the server,"
    " migrations, the admin account)."
)
TARGET_SECONDS = 3.0
_SERVER_READY = re.compile(r"embedded PostgreSQL ready in ([\d.]+) s")


def _start(data_dir: Path, log_path: Path) -> tuple[float, float]:
    """(control plane ready, server ready) in seconds, for one start."""
    env = api_env("", data_dir, "127.0.0.1:1", "bench-token", "conda-forge")
    del env["DARB_DATABASE_URL"]
    log_path.write_text("")
    began = time.monotonic()
    api = start_api(env, log_path)
    ready = time.monotonic() - began
    api.stop()
    [server] = _SERVER_READY.findall(log_path.read_text())
    return ready, float(server)


def main(scratch: Path) -> list[Row]:
    data_dir = scratch / "embedded" / "data"
    data_dir.mkdir(parents=True)
    log_path = scratch / "embedded" / "api.log"
    cold_ready, cold_server = _start(data_dir, log_path)
    warm = [_start(data_dir, log_path) for _ in range(ROUNDS)]
    ready = statistics.median(total for total, _ in warm)
    server = statistics.median(own for _, own in warm)
    target = f"<= {TARGET_SECONDS:g}"
    return [
        Row(
            f"make run: control plane ready on the embedded PostgreSQL, warm data dir"
            f" (s, median of {ROUNDS})",
            f"{ready:.2f}",
            target,
            ready <= TARGET_SECONDS,
        ),
        Row("  of which the embedded server's start (s, median)", f"{server:.2f}"),
        Row(
            "make run: first start on an empty data dir, initdb included (s): control"
            " plane / embedded server",
            f"{cold_ready:.2f} / {cold_server:.2f}",
        ),
    ]
