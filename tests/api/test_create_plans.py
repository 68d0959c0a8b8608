"""``darb_create_environment`` counts the owner's environments for the quota by the
owner's index, however much the tables grew since the session cached its plans: a
generic plan cached on small tables read every live environment's index entry instead,
so that each create got slower with every environment (until an ANALYZE replaced it).

The plan the function ran is read from auto_explain, sent to this session as notices."""

from __future__ import annotations

import json
import uuid

import psycopg

from testkit.postgres import fresh_database, libpq_url
from testkit.schema import bare_user, migrate_url

COUNT = "FROM environments AS e"


def _create(conn: psycopg.Connection, owner: str, name: str) -> None:
    conn.execute(
        "SELECT * FROM darb_create_environment(%s, 1000, 1000, %s, %s, 'pixi', %s, 'agent',"
        " 'PENDING', %s, 'CREATE_ENVIRONMENT', 'PENDING', %s, 'darb_test', '')",
        (owner, str(uuid.uuid4()), name, json.dumps(["c"]), str(uuid.uuid4()), "{}"),
    )


def _many_environments(conn: psycopg.Connection, owner: str, count: int) -> None:
    columns = (
        "id, owner_id, name, package_manager, channels, executor, status, error, manifest,"
        " lockfile, created_at, updated_at"
    )
    with conn.cursor().copy(f"COPY environments ({columns}) FROM STDIN") as copy:
        for n in range(count):
            copy.write_row(
                (
                    str(uuid.uuid4()),
                    owner,
                    f"other-{n}",
                    "pixi",
                    "[]",
                    "a",
                    "READY",
                    "",
                    "",
                    "",
                    "now",
                    "now",
                )
            )


def test_the_quota_count_reads_the_owners_index_after_the_tables_grew() -> None:
    with fresh_database() as url:
        migrate_url(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            owner, other = bare_user(conn), bare_user(conn)
            for n in range(10):  # past the 5 calls after which a generic plan may be cached
                _create(conn, owner, f"small-{n}")
            _many_environments(conn, other, 5_000)  # no ANALYZE: nothing invalidates plans
            plans: list[str] = []
            conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
            conn.execute("LOAD 'auto_explain'")
            for setting in ("log_min_duration = 0", "log_nested_statements = on",
                            "log_level = notice"):  # fmt: skip
                conn.execute(f"SET auto_explain.{setting}")
            _create(conn, owner, "after-growth")
    [count] = [plan for plan in plans if COUNT in plan]
    assert "Index Cond: ((owner_id)::text =" in count or "Index Cond: (owner_id =" in count, count
