"""Brings the schema up to date on start: Alembic's tables, then ``repo/schema.sql``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from services.api.database.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
# The current functions and triggers (see the file's header).
SCHEMA = Path(__file__).parents[1] / "repo" / "schema.sql"
# Any constant works; it only has to be the same for every control-plane process.
_MIGRATION_LOCK = 0x64617262


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    # Processes starting together take turns instead of racing on DDL.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")
    # psycopg reads % as a placeholder: the file is sent with each one doubled.
    connection.exec_driver_sql(SCHEMA.read_text().replace("%", "%%"))


async def migrate(database: Database) -> None:
    await database.run_connection(_upgrade)
