"""The database handle: one way to run a unit of work whatever the driver.

Repository functions are plain synchronous functions of a SQLAlchemy ``Session`` so
that the same code runs on PostgreSQL (psycopg 3 through the asyncio engine, the session
driven by ``run_sync``) and on the embedded SQLite default, for which no async driver is
installed: there each unit of work runs on one dedicated thread, which also serializes
the writers SQLite allows only one of at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

T = TypeVar("T")
CONNECT_TIMEOUT = 10


class Database:
    """Runs ``fn(session)`` in one transaction, committed when ``fn`` returns."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self._async: AsyncEngine | None = None
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if self.dialect == "sqlite":
            self._sync = sqlite_engine(url)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darb-sqlite")
        else:
            # pre-ping replaces connections a database restart broke; the connect timeout
            # keeps a call from hanging on a server that does not answer at all.
            self._async = create_async_engine(
                url,
                pool_pre_ping=True,
                pool_size=10,
                connect_args={"connect_timeout": CONNECT_TIMEOUT},
            )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._async is not None:
            session = AsyncSession(self._async, expire_on_commit=False)
            async with session, session.begin():
                return await session.run_sync(lambda s: fn(s, *args))
        assert self._thread is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_sqlite, fn, args)

    def _run_sqlite(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with Session(self._sync, expire_on_commit=False) as session, session.begin():
            return fn(session, *args)

    async def ping(self) -> None:
        """Raises unless the database answers."""
        await self.run(lambda s: s.execute(text("SELECT 1")))

    async def run_connection(self, fn: Callable[..., T]) -> T:
        """``fn(connection)`` with a synchronous connection, for Alembic."""
        if self._async is not None:
            async with self._async.begin() as conn:
                return await conn.run_sync(fn)
        assert self._thread is not None

        def call() -> T:
            assert self._sync is not None
            with self._sync.begin() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def close(self) -> None:
        if self._async is not None:
            await self._async.dispose()
        if self._sync is not None:
            self._sync.dispose()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


def sqlite_engine(url: str) -> Engine:
    """SQLite with WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that another process
    claiming jobs in the same file waits instead of failing half-way."""
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
