"""A private PostgreSQL server for one test, which the test may stop and start at will.

The run's shared server cannot be restarted (every other test uses it), so a test that
restarts PostgreSQL gets its own embedded server in a temporary directory. Its URL
stays the same across a stop and a start.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.api.database.embedded import EmbeddedPostgres


@contextlib.contextmanager
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A started private server, stopped and deleted afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="darb-pg-"))
    server = EmbeddedPostgres(directory / "postgres", directory / "postgres.lock")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
