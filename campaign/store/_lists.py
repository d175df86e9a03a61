"""The one place that says "this column is one of these values" for a list known only at run time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement


def among(conn: Connection, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values…)`. On PostgreSQL `column = ANY(:values)`, the values one array parameter: the
    statement's text is then the same whatever their number, so psycopg converts it once and prepares it,
    and PostgreSQL plans it once. An IN list of a batch's 250 ids is rendered by SQLAlchemy, parsed by psycopg
    (3 ms of CPU) and planned by PostgreSQL anew every time. SQLite has no arrays: its IN list stays."""
    values = list(values)
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)
