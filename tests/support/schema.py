"""Brings a database (PostgreSQL or SQLite) to the current schema, as the control plane
does when it starts, for tests that use the repository layer without a control plane."""

from __future__ import annotations

import asyncio

from services.api.db import Database
from services.api.migrate import migrate


def migrate_url(url: str) -> None:
    asyncio.run(_migrate(url))


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await migrate(database)
    finally:
        await database.close()
