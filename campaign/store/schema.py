"""The schema's revision, as Alembic records it in its own table (read without loading Alembic: every
command checks it before it starts, and Alembic takes a fifth of a second to import)."""

from __future__ import annotations

from sqlalchemy import Connection, column, inspect, select, table

_VERSION = table("alembic_version", column("version_num"))


def revision(conn: Connection) -> str | None:
    """The revision the database is at; None before the first `campaign init`."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(select(_VERSION.c.version_num)).scalar()
    return None if value is None else str(value)
