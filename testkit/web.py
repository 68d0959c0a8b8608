"""Start the web UI (``python -m services.web``) as a real process, as ``make run`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import launch, stop


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """For an opener that returns a redirect (as an ``HTTPError``) instead of following it."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class WebProcess:
    process: subprocess.Popen[str]
    addr: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        return stop(self.process, sig, timeout)


def start_web(api_addr: str, log_path: Path, **extra: str) -> WebProcess:
    """The web UI on a free loopback port, calling the control plane at ``api_addr``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARB_")}
    env.update(DARB_WEB_ADDR="127.0.0.1:0", DARB_WEB_API=api_addr, **extra)
    process, addr = launch("services.web", env, log_path)
    return WebProcess(process, addr, log_path)
