"""``python -m services.api``: the darb control plane."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.api.app import serve
from shared.config import ApiSettings, ConfigError


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = ApiSettings.from_env()
    except ConfigError as exc:
        print(f"darb api: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
