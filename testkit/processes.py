"""Start a darb service as a real process and stop it, for tests and benchmarks.

Both services print ``darb <service> listening on HOST:PORT`` as their first line on
stdout once they serve (with port 0 they pick a free port); logs go to a file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def launch(
    module: str, env: dict[str, str], log_path: Path, append: bool = False
) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m module`` and wait for its ready line; the process and its address."""
    with log_path.open("a" if append else "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the line, or EOF if it dies
    ready, _, addr = line.partition(" listening on ")
    if not ready.startswith("darb ") or not addr.strip():
        process.kill()
        raise RuntimeError(f"{module} did not start: {line!r}\n{log_path.read_text()}")
    return process, addr.strip()


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` and wait; a process that does not stop in time is killed."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def live_processes() -> dict[int, tuple[str, int]]:
    """pid -> (state, process group) of every process that is not a zombie, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (fields[0], int(fields[2]))
    return found


def group_members(pgid: int) -> list[int]:
    """The live processes of the process group ``pgid``."""
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]
