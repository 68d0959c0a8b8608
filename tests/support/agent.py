"""Start the real executor agent as a separate process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from darb.executor.v1 import executor_pb2_grpc

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "darb executor listening on "


@dataclass
class AgentProcess:
    """A running agent. ``stub()`` opens a channel; ``metadata`` carries the token."""

    process: subprocess.Popen[str]
    addr: str
    data_dir: Path
    log_path: Path
    token: str = ""
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def stub(self) -> executor_pb2_grpc.ExecutorServiceStub:
        channel = grpc.insecure_channel(self.addr)
        self._channels.append(channel)
        return executor_pb2_grpc.ExecutorServiceStub(channel)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def evict_cached(self, package: str) -> None:
        """Drop a package from the agent's package cache, so that installing it (the ~80 MB
        ``acme-big``) takes seconds again: tests that must catch a job while it runs use
        it on agents that may have installed the package before. Only while idle."""
        for entry in (self.data_dir / "pkgs").glob(f"{package}-*"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        for channel in self._channels:
            channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_agent(
    data_dir: Path,
    channel_url: str,
    token: str = "",
    extra_env: dict[str, str] | None = None,
    timeout: float = 30,
    addr: str = "127.0.0.1:0",
) -> AgentProcess:
    """Start ``python -m services.executor`` and wait until it listens (on ``addr``: a
    restarted agent takes the address of the one it replaces)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARB_")}
    env.update(
        DARB_EXECUTOR_ADDR=addr,
        DARB_DATA_DIR=str(data_dir),
        DARB_PIXI_ENGINE="builtin",
        DARB_DEFAULT_CHANNELS=channel_url,
        DARB_ALLOWED_CHANNELS=channel_url,
        DARB_AGENT_TOKEN=token,
    )
    env.update(extra_env or {})
    log_path = data_dir.parent / f"{data_dir.name}-agent.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    addr = _read_address(process, log_path, timeout)
    return AgentProcess(process, addr, data_dir, log_path, token)


def _read_address(process: subprocess.Popen[str], log_path: Path, timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()
    if not line.startswith(READY_PREFIX) or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"agent did not start: {line!r}\n{log_path.read_text()}")
    return line.removeprefix(READY_PREFIX).strip()
