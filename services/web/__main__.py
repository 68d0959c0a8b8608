"""``python -m services.web``: serve the web UI until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from services.web.app import serve
from shared.config import WebSettings
from shared.lifecycle import run_service

if __name__ == "__main__":
    sys.exit(run_service("web", WebSettings.from_env, serve))
