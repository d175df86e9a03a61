"""Accounts, devices and their settings: staged, set-based imports.

An import streams the file into a temporary staging table, runs the whole-file checks (duplicate ids,
unknown accounts) as SQL there, counts what is new and what differs, and writes with one `UPDATE … FROM`
(rows that differ) and one `INSERT … SELECT` (new rows) per table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from campaign.models import ACCOUNT, DEVICE, DEVICE_SETTING

A, D, S = ACCOUNT, DEVICE, DEVICE_SETTING
ACCOUNT_FIELDS = ("id", "email", "name", "locale", "timezone", "country")
DEVICE_FIELDS = ("id", "account_id", "name", "model")


def prepare(conn: Connection) -> None:
    """Ready the connection for a bulk import, and wait until no other import is writing, for the rest of this
    transaction: the writes below rely on knowing which rows are new. SQLite's BEGIN IMMEDIATE does this
    already; on PostgreSQL, read committed lets two imports both find an id new, so it takes an advisory lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(IMPORT_LOCK)))
    if conn.dialect.name == "sqlite":
        # A pragma (Core has none): a larger page cache for this connection, as a bulk upsert touches many
        # index pages (bounded: 64 MiB).
        conn.exec_driver_sql("PRAGMA cache_size = -65536")


# -- staging ----------------------------------------------------------------------------------------------

def account_stage() -> Table:
    return Table("stage_account", MetaData(), Column("line", Integer),
                 *(Column(name, Text) for name in ACCOUNT_FIELDS), prefixes=["TEMPORARY"])


def device_stage(settings: int) -> Table:
    """The device stage: one row per device, its settings as columns s0, s1, … (`settings` of them)."""
    return Table("stage_device", MetaData(), Column("line", Integer),
                 *(Column(name, Text) for name in DEVICE_FIELDS),
                 *(Column(f"s{i}", Text) for i in range(settings)), prefixes=["TEMPORARY"])


def create_stage(conn: Connection, table: Table) -> None:
    table.drop(conn, checkfirst=True)
    table.create(conn)


def drop_stage(conn: Connection, table: Table) -> None:
    table.drop(conn, checkfirst=True)


def widen_device_stage(conn: Connection, settings: int) -> Table:
    """Add the column of one more setting to the device stage (a JSON Lines file may bring a new key on any
    line); returns the stage as it now is."""
    # DDL that Core does not express (ALTER TABLE … ADD COLUMN).
    conn.exec_driver_sql(f"ALTER TABLE stage_device ADD COLUMN s{settings} TEXT")
    return device_stage(settings + 1)


def stage(conn: Connection, table: Table, rows: Sequence[Sequence[Any]]) -> None:
    """Insert many rows (tuples in the table's column order) as fast as the driver allows.

    Below Core on purpose: COPY on PostgreSQL, which Core cannot say; the DBAPI's executemany on SQLite, 4×
    faster than Core's executemany of the same rows (measured: 200k rows in 0.62 s against 2.6 s)."""
    if not rows:
        return
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cols = ", ".join(c.name for c in table.columns)
    if conn.dialect.name == "postgresql":
        pg_cursor: Any = dbapi.cursor()
        with pg_cursor, pg_cursor.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in table.columns)
        cur = dbapi.cursor()
        try:
            cur.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)
        finally:
            cur.close()


def _problem_rows(conn: Connection, stmt: Select[Any], limit: int) -> tuple[list[Any], int]:
    """The first `limit` rows of `stmt` (ordered by its first column) and how many there are in all."""
    sub = stmt.subquery()
    count = int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
    if not count:
        return [], 0
    return list(conn.execute(select(sub).order_by(*sub.c[:1]).limit(limit)).all()), count


def duplicates(conn: Connection, table: Table, limit: int) -> tuple[list[tuple[int, str, int]], int]:
    """(line, id, first line) of every staged row whose id appeared on an earlier line; the cheap count first."""
    dup_ids = select(table.c.id).group_by(table.c.id).having(func.count() > 1)
    if conn.execute(select(func.count()).select_from(dup_ids.subquery())).scalar_one() == 0:
        return [], 0
    first = (select(table.c.id, func.min(table.c.line).label("first")).group_by(table.c.id)
             .having(func.count() > 1).subquery())
    stmt = (select(table.c.line, table.c.id, first.c.first).join(first, first.c.id == table.c.id)
            .where(table.c.line > first.c.first))
    rows, count = _problem_rows(conn, stmt, limit)
    return [(int(r[0]), r[1], int(r[2])) for r in rows], count


def unknown_accounts(conn: Connection, stage_table: Table, limit: int) -> tuple[list[tuple[int, str]], int]:
    """(line, account id) of every staged device whose account does not exist."""
    stmt = select(stage_table.c.line, stage_table.c.account_id).where(
        ~exists().where(A.c.id == stage_table.c.account_id))
    rows, count = _problem_rows(conn, stmt, limit)
    return [(int(r[0]), r[1]) for r in rows], count


# -- upserts ----------------------------------------------------------------------------------------------
# An import knows from its counts which staged rows are new and which differ, and no other command inserts
# accounts, devices or settings (the flip only updates settings): so it writes with a plain UPDATE of the rows
# that differ and a plain INSERT of the new ones, not `INSERT … ON CONFLICT DO UPDATE`. On PostgreSQL the
# speculative insertion of ON CONFLICT costs a third more per row (measured: 322k devices, 3.4 s against
# 1.9 s without the constraint triggers); SQLite does not mind either way. Two imports at once must not both
# find a row new, so an import takes its turn first (`prepare`).

IMPORT_LOCK = 0x63616D70_70656F70  # "camppeop": the transaction-level advisory lock of `import` on PostgreSQL


@dataclass(frozen=True)
class Counts:
    """What the counts found among the staged rows: how many in all, new (no row with the id yet), and
    existing rows whose fields differ (the writes skip what has nothing to do)."""

    total: int
    new: int
    changed: int


def _differs(stage_table: Table, target: Table, columns: Sequence[str]) -> Any:
    return or_(*(target.c[c] != stage_table.c[c] for c in columns))


def account_counts(conn: Connection, stage_table: Table) -> tuple[int, int, int]:
    """(staged, new, changed) accounts."""
    changed = _differs(stage_table, A, ACCOUNT_FIELDS[1:])
    total, new, updated = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((A.c.id.is_(None), 1), else_=0)), 0),
               func.coalesce(func.sum(case((and_(A.c.id.is_not(None), changed), 1), else_=0)), 0))
        .select_from(stage_table.outerjoin(A, A.c.id == stage_table.c.id))).one()
    return int(total), int(new), int(updated)


def _write_rows(conn: Connection, stage_table: Table, target: Table, fields: Sequence[str],
                now: dt.datetime, counts: Counts) -> None:
    """Update the rows of `target` whose fields differ from the staged ones, then insert the new ones (by
    id); stamps the times."""
    if counts.changed:
        conn.execute(update(target)
                     .where(target.c.id == stage_table.c.id, _differs(stage_table, target, fields[1:]))
                     .values({**{f: stage_table.c[f] for f in fields[1:]}, "updated_at": now}))
    if counts.new:
        src = select(*(stage_table.c[f] for f in fields), literal(now, target.c.created_at.type),
                     literal(now, target.c.updated_at.type))
        if counts.new < counts.total:
            src = src.where(~exists().where(target.c.id == stage_table.c.id))
        conn.execute(insert(target).from_select([*fields, "created_at", "updated_at"], src))


def upsert_accounts(conn: Connection, stage_table: Table, now: dt.datetime, counts: Counts) -> None:
    _write_rows(conn, stage_table, A, ACCOUNT_FIELDS, now, counts)
    _analyze(conn, A)


def _analyze(conn: Connection, *tables: Table) -> None:
    """Fresh planner statistics after an import, on PostgreSQL: autovacuum may take minutes to notice a
    large import (and never analyzes a database copied from a template), and without statistics the
    audience's joins go from milliseconds to seconds a batch. Raw SQL: Core has no ANALYZE."""
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.execute(text(f"ANALYZE {table.name}"))


def device_counts(conn: Connection, stage_table: Table, keys: Sequence[str]) -> tuple[int, int, int, int]:
    """(staged, new, changed, setting values changed) devices; a changed setting value counts as a change."""
    total, new = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((D.c.id.is_(None), 1), else_=0)), 0))
        .select_from(stage_table.outerjoin(D, D.c.id == stage_table.c.id))).one()
    total, new = int(total), int(new)
    if total == new:
        return total, new, 0, 0
    setting_differs = [and_(stage_table.c[f"s{i}"].is_not(None), ~exists().where(
        S.c.device_id == stage_table.c.id, S.c.key == key, S.c.value == stage_table.c[f"s{i}"]))
        for i, key in enumerate(keys)]
    updated = conn.execute(select(func.count()).select_from(stage_table.join(D, D.c.id == stage_table.c.id))
                           .where(or_(_differs(stage_table, D, DEVICE_FIELDS[1:]), *setting_differs))).scalar_one()
    values_changed = 0
    for i, key in enumerate(keys):
        values_changed += int(conn.execute(
            select(func.count()).select_from(stage_table.join(S, and_(S.c.device_id == stage_table.c.id,
                                                                      S.c.key == key)))
            .where(S.c.value != stage_table.c[f"s{i}"])).scalar_one())
    return total, new, int(updated), values_changed


def upsert_devices(conn: Connection, stage_table: Table, keys: Sequence[str], now: dt.datetime,
                   counts: Counts, values_changed: int) -> None:
    """Write the devices (`counts.changed`: devices whose own fields or settings differ, an upper bound of
    those whose own fields do) and then their settings (`values_changed` stored values differ)."""
    _write_rows(conn, stage_table, D, DEVICE_FIELDS, now, counts)
    # A value that differs from the stored one is the person's own change: stamp it, and forget which
    # campaign change (if any) wrote the old value, so a rollback leaves it alone.
    for i, key in enumerate(keys):
        col = stage_table.c[f"s{i}"]
        if values_changed:
            conn.execute(update(S).where(S.c.device_id == stage_table.c.id, S.c.key == key, col.is_not(None),
                                         S.c.value != col)
                         .values(value=col, changed_at=now, change_id=None))
        src = select(stage_table.c.id, literal(key, S.c.key.type), col, literal(now, S.c.changed_at.type),
                     literal(None, S.c.change_id.type)).where(col.is_not(None))
        if counts.new < counts.total:  # a new device has no settings yet; an existing one may lack this key
            src = src.where(~exists().where(S.c.device_id == stage_table.c.id, S.c.key == key))
        conn.execute(insert(S).from_select(["device_id", "key", "value", "changed_at", "change_id"], src))
    _analyze(conn, D, S)
