"""The hottest statements straight through psycopg, without SQLAlchemy's session.

The session's CPU cost per statement is several times a cheap query's own (see
``docs/benchmarks.md``). The statements stay SQLAlchemy Core, compiled once for
PostgreSQL. The hot writes are single statements (the claim's CTE,
``darb_create_environment``, a batch of log lines), each its own transaction; only COPY
needs ``transaction``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import namedtuple_row
from psycopg.types.json import Json
from sqlalchemy import JSON, ClauseElement, Compiled
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg

# A connection idle for longer is pinged before use, as the SQLAlchemy pool's are.
PING_AFTER_IDLE = 1.0
_DIALECT = PGDialectAsync_psycopg()


class UniqueViolation(Exception):
    """A statement hit a unique constraint (its transaction was rolled back)."""


class Query:
    """A Core statement with named ``bindparam``s, run without the ORM."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement

    @cached_property
    def _compiled(self) -> Compiled:
        return self.statement.compile(dialect=_DIALECT)

    @cached_property
    def postgres_sql(self) -> str:
        if "POSTCOMPILE" in str(self._compiled):
            raise ValueError("expanding parameters (IN over a list) are not supported here")
        return str(self._compiled)

    @cached_property
    def _json_params(self) -> frozenset[str]:
        binds = self._compiled.binds.items()  # type: ignore[attr-defined]
        return frozenset(name for name, bind in binds if isinstance(bind.type, JSON))

    @cached_property
    def _own_params(self) -> dict[str, Any]:
        """Values written into the statement itself (``Job.status == "PENDING"``)."""
        return {name: value for name, value in self._compiled.params.items() if value is not None}

    def postgres_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` as psycopg takes them: with the statement's own values, and JSON
        columns' values wrapped (SQLAlchemy's bind processing, which would do that, is
        skipped)."""
        merged = {**self._own_params, **params} if self._own_params else params
        if not self._json_params:
            return merged
        return {
            name: Json(value) if name in self._json_params else value
            for name, value in merged.items()
        }


class DirectPool:
    """Up to ``size`` autocommit connections; reads wait for a free one."""

    def __init__(self, conninfo: str, size: int, connect_timeout: int) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []

    async def fetch_one(self, query: Query, params: dict[str, Any]) -> Any:
        """The first row (a named tuple) or None."""
        async with self._connection() as conn:
            return await (await _execute(conn, query, params)).fetchone()

    async def fetch_all(self, query: Query, params: dict[str, Any]) -> list[Any]:
        """Every row, as named tuples."""
        async with self._connection() as conn:
            return await (await _execute(conn, query, params)).fetchall()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in a transaction: a COPY and the NOTIFY that must commit with it."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = await self._take()
            try:
                yield conn
            finally:
                if conn.broken or conn.closed:
                    await conn.close()
                else:
                    self._idle.append((conn, time.monotonic()))

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn, idle_since = self._idle.pop()
            if time.monotonic() - idle_since < PING_AFTER_IDLE:
                return conn
            try:
                await conn.execute("SELECT 1")
                return conn
            except psycopg.Error:  # broken by a database restart: use another one
                await conn.close()
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            row_factory=namedtuple_row,
            connect_timeout=self._connect_timeout,
        )

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


async def _execute(
    conn: psycopg.AsyncConnection[Any], query: Query, params: dict[str, Any]
) -> psycopg.AsyncCursor[Any]:
    try:
        return await conn.execute(query.postgres_sql, query.postgres_params(params))
    except psycopg.errors.UniqueViolation as exc:
        raise UniqueViolation(str(exc)) from exc
