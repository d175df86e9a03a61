"""The one place that says "this column is one of these values", for values known only at run time: a list
(a batch's ids, addresses) or a subquery (the rows a claim picks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Select, any_, bindparam, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement


def among(conn: Connection, column: ColumnElement[Any], values: Iterable[Any] | Select[Any]) -> ColumnElement[bool]:
    """`column IN (values…)`, or `column IN (subquery)`. SQLite has no arrays: it keeps its IN, and looks each
    row up by its key either way. On PostgreSQL:

    - a list is one array parameter, `column = ANY(:values)`: the statement's text is then the same whatever
      their number, so psycopg converts it once and prepares it, and PostgreSQL plans it once (an IN list of
      a batch's 250 ids is rendered by SQLAlchemy, parsed by psycopg — 3 ms of CPU — and planned anew every
      time);
    - a subquery is `column = ANY(ARRAY(subquery))`: selected once, then each row fetched by its key. `IN
      (subquery)` is planned as a join, and with the statistics of a wave just made (every row pending) as a
      join to a scan of the whole ledger: every claim would read every row, O(n²) over a wave."""
    postgresql = conn.dialect.name == "postgresql"
    if isinstance(values, Select):
        return column == any_(func.array(values.scalar_subquery())) if postgresql else column.in_(values)
    values = list(values)
    if postgresql:
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)
