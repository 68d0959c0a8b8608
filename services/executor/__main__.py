"""``python -m services.executor``: run the executor agent until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys

from services.executor.server import serve
from shared.config import ConfigError, ExecutorSettings
from shared.logs import configure


def main() -> int:
    configure("executor")
    try:
        settings = ExecutorSettings.from_env()
    except ConfigError as exc:
        print(f"darb executor: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
