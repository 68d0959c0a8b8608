"""A fresh PostgreSQL database for one test run, dropped afterwards.

The server is the local one with trust auth (user ``postgres``); override the server URL
with ``DARB_TEST_POSTGRES`` (without a database name) if it lives elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
from psycopg import sql

SERVER_URL = os.environ.get("DARB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/")


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as psycopg itself takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def _admin_conninfo() -> str:
    return libpq_url(SERVER_URL).rstrip("/") + "/postgres"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Yields the SQLAlchemy URL of a new empty database ``darb_test_<random>``."""
    name = f"darb_test_{secrets.token_hex(6)}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield SERVER_URL.rstrip("/") + "/" + name
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
