"""The suppression list. Addresses are stored normalized (`campaign.addresses`) and matched without regard to
case (`lower(email)`, through a unique expression index): a missed match would mail someone who asked not to be."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Connection, RowMapping, exists, func, select

from campaign.models import SUPPRESSION
from campaign.store._lists import among
from campaign.store._upsert import insert as upsert_insert

SU = SUPPRESSION


def matches(email: ColumnElement[str]) -> ColumnElement[bool]:
    """True when the address in the column `email` is suppressed (for use inside larger statements)."""
    return exists().where(func.lower(SU.c.email) == func.lower(email))


def add(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert the addresses not yet suppressed; returns how many were new. An existing entry keeps its first
    reason (the evidence of why the address was first suppressed)."""
    rows = list(rows)
    if not rows:
        return 0
    stmt = upsert_insert(conn, SU).on_conflict_do_nothing(index_elements=[func.lower(SU.c.email)])
    before = count(conn)
    conn.execute(stmt, [dict(r) for r in rows])
    return count(conn) - before


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(SU)).scalar_one())


def suppressed(conn: Connection, emails: Iterable[str]) -> set[str]:
    """Which of `emails` are suppressed, as their lower-cased forms."""
    lowered = sorted({e.lower() for e in emails})
    if not lowered:
        return set()
    lower = func.lower(SU.c.email, type_=SU.c.email.type)
    return set(conn.execute(select(lower).where(among(conn, lower, lowered))).scalars())


def entries(conn: Connection) -> list[RowMapping]:
    return list(conn.execute(select(SU.c.email, SU.c.reason, SU.c.source, SU.c.created_at, SU.c.created_by)
                             .order_by(SU.c.created_at, SU.c.email)).mappings())


def entry(conn: Connection, email: str) -> RowMapping | None:
    return conn.execute(select(SU).where(func.lower(SU.c.email) == email.lower())).mappings().first()

