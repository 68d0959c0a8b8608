"""``python -m services.api``: run the darb control plane until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from services.api.app import serve, serve_rpc_worker
from services.api.workers import WORKER_FLAG
from shared.config import ApiSettings
from shared.lifecycle import run_service

if __name__ == "__main__":
    worker = WORKER_FLAG in sys.argv[1:]
    sys.exit(run_service("api", ApiSettings.from_env, serve_rpc_worker if worker else serve))
