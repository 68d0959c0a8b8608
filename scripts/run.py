"""``make run``: the control plane, the agent and the web UI in the foreground on embedded
defaults.

Their logs are interleaved with a prefix; Ctrl-C (or SIGTERM) stops all three cleanly. The
agent token is made fresh for each run, so nothing else on the host can drive the agent.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 30


def settings() -> dict[str, str]:
    """Embedded defaults; any DARB_* already set in the environment wins."""
    data_dir = Path(os.environ.get("DARB_DATA_DIR", ROOT / "data")).resolve()
    demo_channel = Path(os.environ.get("DARB_DEMO_CHANNEL_DIR", data_dir / "demo-channel"))
    defaults = {
        "DARB_DATA_DIR": str(data_dir),
        "DARB_API_ADDR": "127.0.0.1:50051",
        "DARB_EXECUTOR_ADDR": "127.0.0.1:50052",
        "DARB_WEB_ADDR": "127.0.0.1:8080",
        "DARB_EXECUTORS": os.environ.get("DARB_EXECUTOR_ADDR", "127.0.0.1:50052"),
        "DARB_DEV_DEFAULTS": "1",
        "DARB_AGENT_TOKEN": secrets.token_urlsafe(32),
        "DARB_DEFAULT_CHANNELS": "conda-forge",
        "DARB_ALLOWED_CHANNELS": f"conda-forge,{demo_channel.resolve().as_uri()}",
    }
    return {**defaults, **{k: v for k, v in os.environ.items() if k.startswith("DARB_")}}


def relay(name: str, stream: object) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sys.stdout.write(f"[{name:8}] {line}")
        sys.stdout.flush()


def start(name: str, module: str, env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C reaches this supervisor only; it stops all in order
    )
    threading.Thread(target=relay, args=(name, process.stdout), daemon=True).start()
    return process


def main() -> int:
    env = {**os.environ, **settings()}
    Path(env["DARB_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    processes = {"executor": start("executor", "services.executor", env)}
    processes["api"] = start("api", "services.api", env)
    processes["web"] = start("web", "services.web", env)
    print(
        f"darb is starting: control plane on {env['DARB_API_ADDR']}, agent on "
        f"{env['DARB_EXECUTOR_ADDR']}, data in {env['DARB_DATA_DIR']}\n"
        f"  the web UI: open http://{env['DARB_WEB_ADDR']}/ in a browser\n"
        f"  log in with the development default admin / password123 (never use it in"
        f" production), e.g.\n    .venv/bin/darb login --username admin\n"
        f"  grpcurl -plaintext {env['DARB_API_ADDR']} list\n  Ctrl-C stops all three.",
        flush=True,
    )
    while not stop.wait(0.5):
        if any(process.poll() is not None for process in processes.values()):
            break
    for process in reversed(list(processes.values())):  # web, api, then the agent
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
    codes = {name: process.wait() for name, process in processes.items()}
    print(f"darb stopped ({', '.join(f'{n} exit {c}' for n, c in codes.items())})", flush=True)
    return 0 if stop.is_set() and not any(codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
