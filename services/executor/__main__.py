"""``python -m services.executor``: run the executor agent until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from services.executor.server import serve
from shared.config import ExecutorSettings
from shared.lifecycle import run_service

if __name__ == "__main__":
    sys.exit(run_service("executor", ExecutorSettings.from_env, serve))
