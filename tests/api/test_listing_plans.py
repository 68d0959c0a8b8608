"""Listing what a user may see reads that user's memberships by their indexes, not every
membership of every user: with 20,000 memberships of someone else in the table, the
plans of ListEnvironments' and ListJobs' queries for a user with a few shares hold no
sequential scan of ``environment_members``. (An OR of "the user's own, their groups',
everyone's" over the whole table could only be run as such a scan.) An admin's
``shared = true`` listing (admins may view every environment) starts from the admin's
memberships too, instead of walking all 20,000 environments to test each.

The statements are the repo functions' own, caught as SQLAlchemy sends them, and
explained with their parameters."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from services.api import filters
from services.api.repo import environments, jobs
from services.api.repo.models import User
from testkit.postgres import fresh_database, libpq_url
from testkit.schema import bare_user, migrate_url

OTHERS = 20_000
SCAN = "Seq Scan on environment_members"


def _environments(conn: psycopg.Connection, owner: str, count: int) -> None:
    """``count`` environments of ``owner``, each with the owner's membership."""
    conn.execute(
        "INSERT INTO environments (id, owner_id, name, package_manager, channels, executor,"
        " status, error, manifest, lockfile, created_at, updated_at)"
        " SELECT gen_random_uuid()::text, %s, 'env-' || n, 'pixi', '[]', 'a', 'READY', '',"
        " '', '', now(), now() FROM generate_series(1, %s) AS n",
        (owner, count),
    )
    conn.execute(
        "INSERT INTO environment_members (environment_id, member_key, user_id, role)"
        " SELECT id, 'user:' || owner_id, owner_id, 3 FROM environments WHERE owner_id = %s",
        (owner,),
    )


def _share(conn: psycopg.Connection, owner: str, caller: str) -> None:
    """Two of ``owner``'s environments for ``caller``: one directly, one through a group."""
    group = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO groups (id, name, created_by, created_at) VALUES (%s, %s, %s, now())",
        (group, f"g{group[:8]}", owner),
    )
    conn.execute("INSERT INTO group_members (group_id, user_id) VALUES (%s, %s)", (group, caller))
    conn.execute(
        "INSERT INTO environment_members (environment_id, member_key, user_id, role)"
        " SELECT id, 'user:' || %s, %s, 1 FROM environments WHERE name = 'env-1'",
        (caller, caller),
    )
    conn.execute(
        "INSERT INTO environment_members (environment_id, member_key, group_id, role)"
        " SELECT id, 'group:' || %s, %s, 2 FROM environments WHERE name = 'env-2'",
        (group, group),
    )


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, str, str]]:
    """The database's URL, and the ids of a user and of an admin, each with two shares
    among 20,000 others'."""
    with fresh_database() as url:
        migrate_url(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            owner, caller, admin = bare_user(conn), bare_user(conn), bare_user(conn, admin=True)
            _environments(conn, owner, OTHERS)
            _share(conn, owner, caller)
            _share(conn, owner, admin)
            conn.execute("ANALYZE")
        yield url, caller, admin


def _explained(
    url: str, user_id: str, listing: Any, explain: str = "EXPLAIN"
) -> tuple[Any, list[str]]:
    """What ``listing(session, user)`` returns, and the plan of each statement it sent
    that reads the memberships."""
    engine = create_engine(url)
    sent: list[tuple[str, Any]] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, parameters, _ctx, _many: sent.append((statement, parameters)),
    )
    with Session(engine) as session:
        user = session.get(User, user_id)
        assert user is not None
        sent.clear()
        result = listing(session, user)
        plans = []
        for statement, parameters in list(sent):
            if "environment_members" in statement:
                rows = session.connection().exec_driver_sql(f"{explain} {statement}", parameters)
                plans.append("\n".join(row[0] for row in rows))
    engine.dispose()
    assert plans, "no statement read the memberships"
    return result, plans


def test_listing_environments_reads_only_the_callers_memberships(
    database: tuple[str, str, str],
) -> None:
    url, caller, _ = database
    rows, plans = _explained(url, caller, lambda s, u: environments.page(s, u, [], ("", ""), 51))
    assert [(row.name, row.role) for row in rows] == [("env-1", 1), ("env-2", 2)]
    assert not [plan for plan in plans if SCAN in plan], plans


def test_listing_jobs_reads_only_the_callers_memberships(
    database: tuple[str, str, str],
) -> None:
    url, caller, _ = database
    found, plans = _explained(url, caller, lambda s, u: jobs.page(s, u, None, None, 51))
    assert found == []  # nobody ran a job; the plan is the point
    assert not [plan for plan in plans if SCAN in plan], plans


def test_an_admins_shared_listing_reads_only_the_shared_environments(
    database: tuple[str, str, str],
) -> None:
    url, _, admin = database
    shared = filters.parse("shared = true")
    rows, [plan] = _explained(
        url, admin, lambda s, u: environments.page(s, u, shared, ("", ""), 51), "EXPLAIN (ANALYZE)"
    )
    assert [(row.name, row.role) for row in rows] == [("env-1", 3), ("env-2", 3)]
    read_rows = [
        float(rows) * int(loops)
        for rows, loops in re.findall(r" on environments .*rows=([\d.]+) loops=(\d+)", plan)
    ]
    assert read_rows and sum(read_rows) <= 2, plan
