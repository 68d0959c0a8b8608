"""Logging set-up shared by both services: one line per record on stderr."""

from __future__ import annotations

import logging
import sys


def configure(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
