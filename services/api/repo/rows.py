"""Inserting new rows with plain Core INSERTs: the ORM's unit of work costs several times
the INSERT itself on the submit path. The same statement runs through a session or,
on the hottest path, straight through psycopg (see services/api/direct.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.orm import Session

from services.api.direct import Query
from services.api.models import Base


class NewRow:
    """The INSERT of ``columns`` of a model's table, with their values read off a
    transient instance (one that stays out of any session and is only read afterwards,
    e.g. to answer the request)."""

    def __init__(self, model: type[Base], columns: Sequence[str]) -> None:
        table = Base.metadata.tables[str(model.__tablename__)]
        self.columns = tuple(columns)
        self.query = Query(insert(table).values({name: bindparam(name) for name in columns}))

    def params(self, row: Base) -> dict[str, Any]:
        return {name: getattr(row, name) for name in self.columns}

    def insert(self, session: Session, row: Base) -> None:
        session.execute(self.query.statement, self.params(row))
