"""The database handle: one way to run a unit of work whatever the driver.

Repository functions are plain synchronous functions of a SQLAlchemy ``Session`` so
that the same code runs on PostgreSQL (psycopg 3 through the asyncio engine, the session
driven by ``run_sync``) and on the embedded SQLite default, for which no async driver is
installed: there each unit of work runs on one dedicated thread, which also serializes
the writers SQLite allows only one of at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from services.api.direct import DirectPool, Query, UniqueViolation

T = TypeVar("T")
CONNECT_TIMEOUT = 10
POOL_SIZE = 10
# A pooled connection idle for longer is pinged before use (see ``ping_when_idle``).
PING_AFTER_IDLE = 1.0


class Database:
    """Runs ``fn(session)`` in one transaction, committed when ``fn`` returns."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self._async: AsyncEngine | None = None
        self._sync: Engine | None = None
        self._reader: AsyncEngine | None = None
        self._direct: DirectPool | None = None
        self._thread: ThreadPoolExecutor | None = None
        # SQLite: a unit's statements hop to the one thread one by one, holding the write
        # lock in between; nothing else may run there meanwhile, or it would wait forever.
        self._sqlite_units = asyncio.Lock()
        if self.dialect == "sqlite":
            self._sync = sqlite_engine(url)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darb-sqlite")
        else:
            # The connect timeout keeps a call from hanging on a server that does not answer.
            self._async = create_async_engine(
                url, pool_size=POOL_SIZE, connect_args={"connect_timeout": CONNECT_TIMEOUT}
            )
            ping_when_idle(self._async.sync_engine)
            self._reader = self._async.execution_options(isolation_level="AUTOCOMMIT")
            self._direct = DirectPool(self.conninfo, POOL_SIZE, CONNECT_TIMEOUT)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def conninfo(self) -> str:
        """The URL for psycopg itself (LISTEN and the direct reads)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def fetch_one(self, query: Query, **params: Any) -> Any:
        """The first row of a Core query (attributes named as its columns), or None; on
        PostgreSQL without SQLAlchemy's session (see ``direct``)."""
        if self._direct is not None:
            return await self._direct.fetch_one(query, params)
        return await self.run(lambda s: s.execute(query.statement, params).first())

    async def fetch_all(self, query: Query, **params: Any) -> list[Any]:
        """PostgreSQL only: every row of a Core query, as ``fetch_one`` returns one (for
        a database function that returns a table, such as ``darb_finish_job``)."""
        if self._direct is None:
            raise RuntimeError("Database.fetch_all needs PostgreSQL")
        return await self._direct.fetch_all(query, params)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[SqliteUnit]:
        """SQLite only: one transaction of Core statements (``unit.execute``,
        ``unit.fetch_one``), committed when the block ends without an exception; a unique
        violation raises ``UniqueViolation``. On PostgreSQL the same steps are single
        statements (the claim's CTE, ``darb_create_environment``)."""
        if self._direct is not None:
            raise RuntimeError("Database.unit is for SQLite")
        async with self._sqlite_units:
            session = await self._in_thread(lambda: Session(self._sync, expire_on_commit=False))
            try:
                await self._in_thread(session.begin)
                yield SqliteUnit(session, self._in_thread)
                await self._in_thread(session.commit)
            except IntegrityError as exc:
                raise UniqueViolation(str(exc)) from exc
            finally:
                await self._in_thread(session.close)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """PostgreSQL only: a psycopg connection in a transaction, committed when the
        block ends without an exception, for what a unit cannot send (COPY)."""
        if self._direct is None:
            raise RuntimeError("Database.transaction needs PostgreSQL")
        async with self._direct.transaction() as conn:
            yield conn

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``run`` for ``fn`` that only reads: without BEGIN and COMMIT, each of its
        statements is its own transaction (as each already sees its own snapshot under
        READ COMMITTED), which saves two round trips."""
        if self._reader is None:
            return await self.run(fn, *args)
        async with AsyncSession(self._reader, expire_on_commit=False) as session:
            return await session.run_sync(lambda s: fn(s, *args))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._async is not None:
            session = AsyncSession(self._async, expire_on_commit=False)
            async with session, session.begin():
                return await session.run_sync(lambda s: fn(s, *args))
        assert self._thread is not None
        loop = asyncio.get_running_loop()
        async with self._sqlite_units:
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
        if self._direct is not None:
            await self._direct.close()
        if self._async is not None:
            await self._async.dispose()
        if self._sync is not None:
            self._sync.dispose()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


class SqliteUnit:
    """Statements of one transaction, each run through the session in the SQLite thread
    (not fast, but SQLite is the development default)."""

    def __init__(self, session: Session, in_thread: Callable[[Callable[[], Any]], Any]) -> None:
        self._session = session
        self._in_thread = in_thread

    async def execute(self, query: Query, **params: Any) -> None:
        await self._in_thread(lambda: self._session.execute(query.statement, params))

    async def fetch_one(self, query: Query, **params: Any) -> Any:
        return await self._in_thread(lambda: self._session.execute(query.statement, params).first())


def ping_when_idle(engine: Engine) -> None:
    """Checks a pooled connection that sat idle before handing it out, so that one broken
    by a database restart is replaced instead of failing a request. A connection in steady
    use is not pinged: that round trip would be a third of a cheap read's cost."""

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
