"""A database at the current schema, and rows made the way production makes them, for
tests that use the repository layer without a control plane; ``bare_user`` for tests that
fill tables straight with SQL."""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from services.api import payloads
from services.api.database.db import Database
from services.api.database.migrate import migrate
from services.api.repo import creates, environments, jobs, users
from services.api.repo.models import Environment, Job, User
from shared.config import ApiLimits

# Nobody listens on this channel.
QUIET = ("darb_test_seed", "test:")


def migrate_url(url: str) -> None:
    asyncio.run(_migrate(url))


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await migrate(database)
    finally:
        await database.close()


def bare_user(conn: psycopg.Connection, admin: bool = False) -> str:
    """The id of a new user inserted with SQL (no password: nobody signs in as it)."""
    user_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO users (id, username, password_hash, is_admin, created_at, disabled)"
        " VALUES (%s, %s, '!', %s, now(), false)",
        (user_id, f"u{uuid.uuid4().hex[:12]}", admin),
    )
    return user_id


async def new_user(database: Database, username: str) -> User:
    return await database.run(users.create, username, "x", False)


async def new_environment(
    database: Database, owner: User, name: str, executor: str = "agent"
) -> tuple[Environment, Job]:
    """An environment and its create job, inserted by ``darb_create_environment``."""
    payload = payloads.CreatePayload(name, ["c"], ["a"])
    environment = environments.new(owner.id, name, "pixi", ["c"], executor)
    job = jobs.new(environment.id, owner.id, payload)
    await creates.create_environment(database, environment, job, ApiLimits(), QUIET)
    return environment, job
