"""Start the real executor agent as a separate process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from darb.executor.v1 import executor_pb2_grpc
from testkit.processes import launch, stop


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
        return stop(self.process, sig, timeout)

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_agent(
    data_dir: Path,
    channel_url: str,
    token: str = "",
    extra_env: dict[str, str] | None = None,
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
    process, addr = launch("services.executor", env, log_path)
    return AgentProcess(process, addr, data_dir, log_path, token)
