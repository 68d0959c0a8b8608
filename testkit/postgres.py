"""The test run's PostgreSQL server, and a fresh database on it per test or run.

By default the suite starts its own embedded server (the one the control plane runs when
``DARB_DATABASE_URL`` is unset) in a temporary directory, once per run; it stops when
the run ends. ``DARB_TEST_POSTGRES`` names another server instead: a SQLAlchemy or
libpq URL with a superuser and no database name (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from services.api.database.embedded import EmbeddedPostgres

# Many control planes share the run's server, each with its pools and LISTEN connection.
TEST_SERVER_SETTINGS = {"max_connections": "400"}


@functools.cache
def _server_url() -> str:
    external = os.environ.get("DARB_TEST_POSTGRES", "").strip()
    if external:
        return external.replace("postgresql://", "postgresql+psycopg://", 1)
    directory = Path(tempfile.mkdtemp(prefix="darb-test-pg-"))
    server = EmbeddedPostgres(
        directory / "postgres", directory / "postgres.lock", settings=TEST_SERVER_SETTINGS
    )
    server.start()
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    atexit.register(server.stop)
    return server.url


def server_url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the run's server."""
    return make_url(_server_url()).set(database=database).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as psycopg itself takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def admin_conninfo() -> str:
    return libpq_url(server_url("postgres"))


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Yields the SQLAlchemy URL of a new empty database ``darb_test_<random>``."""
    name = f"darb_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server_url(name)
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
