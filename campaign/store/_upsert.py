"""The one place that picks each dialect's `insert()` (it alone has ON CONFLICT)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert(conn: Connection, table: Table) -> Any:
    """`INSERT INTO table` with `on_conflict_do_update` / `on_conflict_do_nothing` for this connection's
    database (the same SQL on SQLite and PostgreSQL)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
