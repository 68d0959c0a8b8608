"""Start a darb service as a real process and stop it, for tests and benchmarks.

Both services print ``darb <service> listening on HOST:PORT`` as their first line on
stdout once they serve (with port 0 they pick a free port); logs go to a file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
