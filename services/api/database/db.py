"""The database handle: PostgreSQL through psycopg 3, with and without SQLAlchemy.

Repository functions that use the ORM are plain synchronous functions of a SQLAlchemy
``Session``, run by ``run`` (in a transaction) or ``read`` (autocommit) through the
asyncio engine. The hot statements skip the session (``fetch_one``, ``fetch_all``,
``transaction``; see ``direct``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from services.api.database.direct import DirectPool, Query

T = TypeVar("T")
CONNECT_TIMEOUT = 10
POOL_SIZE = 10
# A pooled connection idle for longer is pinged before use (see ``ping_when_idle``).
PING_AFTER_IDLE = 1.0


class Database:
    """PostgreSQL at ``url`` (a ``postgresql+psycopg://`` SQLAlchemy URL)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        # The connect timeout keeps a call from hanging on a server that does not answer.
        self._async = create_async_engine(
            url, pool_size=POOL_SIZE, connect_args={"connect_timeout": CONNECT_TIMEOUT}
        )
        ping_when_idle(self._async.sync_engine)
        self._reader = self._async.execution_options(isolation_level="AUTOCOMMIT")
        self._direct = DirectPool(self.conninfo, POOL_SIZE, CONNECT_TIMEOUT)

    @property
    def conninfo(self) -> str:
        """The URL for psycopg itself (LISTEN and the direct statements)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def fetch_one(self, query: Query, **params: Any) -> Any:
        """The first row of a Core query (attributes named as its columns), or None,
        without SQLAlchemy's session (see ``direct``)."""
        return await self._direct.fetch_one(query, params)

    async def fetch_all(self, query: Query, **params: Any) -> list[Any]:
        """Every row of a Core query, as ``fetch_one`` returns one (for a database
        function that returns a table, such as ``darb_finish_job``)."""
        return await self._direct.fetch_all(query, params)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A psycopg connection in a transaction, committed when the block ends without
        an exception, for what one statement cannot do (COPY and its NOTIFY)."""
        async with self._direct.transaction() as conn:
            yield conn

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``run`` for ``fn`` that only reads: without BEGIN and COMMIT, each of its
        statements is its own transaction (as each already sees its own snapshot under
        READ COMMITTED), which saves two round trips."""
        async with AsyncSession(self._reader, expire_on_commit=False) as session:
            return await session.run_sync(lambda s: fn(s, *args))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(session, *args)`` in one transaction, committed when it returns."""
        session = AsyncSession(self._async, expire_on_commit=False)
        async with session, session.begin():
            return await session.run_sync(lambda s: fn(s, *args))

    async def ping(self) -> None:
        """Raises unless the database answers."""
        await self.run(lambda s: s.execute(text("SELECT 1")))

    async def run_connection(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` with a synchronous connection in a transaction (Alembic)."""
        async with self._async.begin() as conn:
            return await conn.run_sync(fn)

    async def close(self) -> None:
        await self._direct.close()
        await self._async.dispose()


def ping_when_idle(engine: Engine) -> None:
    """Checks a pooled connection that sat idle before handing it out, so that one broken
    by a database restart is replaced instead of failing a request. A connection in steady
    use is not pinged: that round trip would add a good part of a cheap read's cost (see
    docs/benchmarks.md)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool retries with a new connection
            raise DisconnectionError(f"idle connection is broken: {exc}") from exc
