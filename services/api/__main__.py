"""``python -m services.api``: run the darb control plane until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from services.api.app import serve
from shared.config import ApiSettings
from shared.lifecycle import run_service

if __name__ == "__main__":
    sys.exit(run_service("api", ApiSettings.from_env, serve))
