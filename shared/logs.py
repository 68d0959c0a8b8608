"""Logging set-up shared by both services: one line per record on stderr."""

from __future__ import annotations

import json
import logging
import re
import sys


def configure(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )


# Structured log lines: ``event k=v k=v``, one line per event, easy to grep and parse.
LOG_TEXT_LIMIT = 200
_BARE_VALUE = re.compile(r"[\w.:/@+,<>*-]+")


def headline(text: str) -> str:
    """The first non-blank line of a (possibly multi-line) message."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def clip(text: str) -> str:
    """Long values (spec lists, errors) are cut so one event stays one short line."""
    if len(text) <= LOG_TEXT_LIMIT:
        return text
    return f"{text[:LOG_TEXT_LIMIT]}...({len(text)} chars)"


def key_values(**fields: str) -> str:
    """``k=v`` pairs; values with spaces or quotes are JSON-quoted so each stays one token."""
    return " ".join(
        f"{key}={value if _BARE_VALUE.fullmatch(value) else json.dumps(value)}"
        for key, value in fields.items()
    )
