"""The send ledger: one row per (campaign, wave, account), written and moved set-based.

Materialize with `INSERT … SELECT`; claim batches atomically into `sending` under a lease (`UPDATE …
RETURNING` over a `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite drops the lock clause and
relies on `BEGIN IMMEDIATE`); record outcomes in one statement, each only while its lease holds; give
back the deliveries of a worker that died or whose lease ran out. The caller owns each transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal,
    or_,
    select,
    text,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from campaign.clock import UTCDateTime
from campaign.definition import SendWindow
from campaign.models import (
    ACCOUNT,
    DELIVERY,
    DELIVERY_STATES,
    EXPIRED,
    PENDING,
    SENDING,
    SENT,
    SUPPRESSED,
)
from campaign.policies import WindowCache
from campaign.store import suppressions
from campaign.store._lists import among
from campaign.store._upsert import insert as upsert_insert

LEASE = dt.timedelta(seconds=60)  # the default; a send passes its own (`campaign.delivery.job.Timings`)
D, A = DELIVERY, ACCOUNT
EXPIRED_ERROR = "the wave expired before it could be sent"


# -- creating a wave's rows -----------------------------------------------------------------------------

def materialize(conn: Connection, campaign_id: int, wave_id: int, who: Select[Any], expires: dt.datetime,
                now: dt.datetime) -> int:
    """Add a row for every account selected by `who` (a select of account ids) that has none yet
    (idempotent); a suppressed address is recorded `suppressed` and never attempted. Returns the rows added."""
    rows = select(
        literal(campaign_id), literal(wave_id), A.c.id,
        case((suppressions.matches(A.c.email), literal(SUPPRESSED)), else_=literal(PENDING)),
        A.c.email, literal(0), literal(expires, UTCDateTime()), literal(now, UTCDateTime()),
    ).where(A.c.id.in_(who))
    if conn.dialect.name == "postgresql":
        # No JIT for this one statement: the suppression check's estimate puts its cost past `jit_above_cost`,
        # and compiling it took 35-80 ms of a 10,000-row wave's 0.2-0.5 s (EXPLAIN ANALYZE), for a statement
        # run once. Until the transaction ends; raw SQL: Core has no SET.
        conn.execute(text("SET LOCAL jit = off"))
    # ON CONFLICT DO NOTHING: each dialect's own insert() says it (same SQL on both).
    stmt = upsert_insert(conn, D).from_select(
        ["campaign_id", "wave_id", "account_id", "state", "email", "attempts", "expires_at", "updated_at"],
        rows).on_conflict_do_nothing(index_elements=["campaign_id", "wave_id", "account_id"])
    # An INSERT's cursor is closed at once: keep its row count (SQLAlchemy drops it otherwise on SQLite).
    added = int(conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount or 0)
    if added >= ANALYZE_AFTER and conn.dialect.name == "postgresql":
        # Fresh statistics for the claims that follow (autovacuum would see the new rows only later). Raw
        # SQL: Core has no ANALYZE.
        conn.execute(text("ANALYZE delivery"))
    return added


ANALYZE_AFTER = 1000  # rows added to the ledger at once


def plan_windows(conn: Connection, wave_id: int, window: SendWindow, earliest: dt.datetime) -> int:
    """Give every pending delivery without one a `not_before`: the opening of its recipient's send window
    at or after `earliest`, in the recipient's own zone — one UPDATE per time zone. Returns the zones."""
    waiting = and_(D.c.wave_id == wave_id, D.c.state == PENDING, D.c.not_before.is_(None))
    zones = conn.execute(select(A.c.timezone).distinct().select_from(D.join(A, A.c.id == D.c.account_id))
                         .where(waiting)).scalars().all()
    cache = WindowCache(window)
    stmt = (update(D).where(waiting, D.c.account_id.in_(select(A.c.id).where(A.c.timezone == bindparam("tz"))))
            .values(not_before=bindparam("nb", type_=UTCDateTime())))
    for zone in zones:
        conn.execute(stmt, {"nb": cache.next_opening(zone, earliest), "tz": zone})
    return len(zones)


def expire(conn: Connection, wave_id: int, now: dt.datetime) -> int:
    """Pending deliveries whose wave expired become `expired`."""
    result = conn.execute(update(D).where(D.c.wave_id == wave_id, D.c.state == PENDING, D.c.expires_at <= now)
                          .values(state=EXPIRED, updated_at=now, last_error=EXPIRED_ERROR))
    return int(result.rowcount or 0)


# -- claims and leases ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    account_id: str
    attempts: int  # including this one


def _due(now: dt.datetime, ignore_window: bool) -> ColumnElement[bool]:
    due = or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now)
    if not ignore_window:
        due = and_(due, or_(D.c.not_before.is_(None), D.c.not_before <= now))
    return due


def claim(conn: Connection, wave_id: int, owner: str, limit: int, now: dt.datetime,
          ignore_window: bool = False, lease: dt.timedelta = LEASE) -> list[Claimed]:
    """Move up to `limit` due deliveries of the wave into `sending`, leased to `owner` for `lease`; in id order.

    On SQLite, run outside a transaction (`campaign.connection.Database.write(…, alone=True)`), the one write lock that
    every process shares is held only while the UPDATE runs: the rows it took are read afterwards, as the
    owner's `sending` rows that were not its own before. (With RETURNING, the lock would be held until the
    last row is fetched, each fetch a hand-off of the GIL with a busy event loop: 13 ms a claim of 250 under
    load instead of 5, and a commit of outcomes waiting behind it long enough to hold up every connection.)
    Exact because `owner` claims one batch at a time, and nothing else makes a row `owner`'s `sending` one;
    the claim's time stamp only narrows the reads (an earlier claim with the same `now` is told apart)."""
    # In the claim index's own order (wave, state, then next_attempt_at): the rows come from that index, a
    # batch at a time, with nothing to sort. Without it, PostgreSQL reads the table from its start, which
    # the statistics taken when the wave was made (every row pending) make look cheapest, and which goes
    # through every row already claimed or sent, on each claim.
    pick = (select(D.c.id).where(D.c.wave_id == wave_id, D.c.state == PENDING, _due(now, ignore_window))
            .order_by(D.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True))
    stmt = (update(D).where(among(conn, D.c.id, pick))
            .values(state=SENDING, lease_owner=owner, lease_expires_at=now + lease, attempts=D.c.attempts + 1,
                    updated_at=now))
    if conn.dialect.name != "sqlite":
        rows = conn.execute(stmt.returning(D.c.id, D.c.account_id, D.c.attempts)).all()
        return sorted((Claimed(r.id, r.account_id, r.attempts) for r in rows), key=lambda c: c.id)
    held = (select(D.c.id, D.c.account_id, D.c.attempts)  # the stamp: the few rows to tell apart, not all held
            .where(D.c.wave_id == wave_id, D.c.state == SENDING, D.c.lease_owner == owner, D.c.updated_at == now))
    before = set(conn.execute(held.with_only_columns(D.c.id)).scalars())
    taken = int(conn.execute(stmt).rowcount or 0)
    if not taken:
        return []
    claimed = sorted((Claimed(r.id, r.account_id, r.attempts) for r in conn.execute(held) if r.id not in before),
                     key=lambda c: c.id)
    if len(claimed) != taken:  # another claim of the same owner at the same time: a caller's mistake
        raise RuntimeError(f"claim of {owner!r}: {taken} rows taken, {len(claimed)} found: one claim at a time")
    return claimed


def renew(conn: Connection, owner: str, ids: Sequence[int], now: dt.datetime, lease: dt.timedelta = LEASE) -> int:
    """Extend `owner`'s leases on `ids` (those it still holds) to `lease` from now; returns how many. A row
    that a commit of its outcome holds locked at that moment is skipped (it is leaving `sending`; if that commit
    fails, the next heartbeat renews it): waiting for it, while that commit might wait for a row this
    transaction holds, is how PostgreSQL deadlocks."""
    if not ids:
        return 0
    held = (select(D.c.id).where(D.c.lease_owner == owner, D.c.state == SENDING, among(conn, D.c.id, ids))
            .with_for_update(skip_locked=True))
    result = conn.execute(update(D).where(among(conn, D.c.id, held), D.c.lease_owner == owner, D.c.state == SENDING)
                          .values(lease_expires_at=now + lease))
    return int(result.rowcount or 0)


def reclaim(conn: Connection, wave_id: int, now: dt.datetime, dead_owners: Iterable[str] = ()) -> int:
    """Give back to `pending` the deliveries whose lease ran out or whose worker is known dead. A row locked
    at that moment (its late owner recording it) is left for the next call, as in `renew`."""
    dead = list(dead_owners)
    lost = D.c.lease_expires_at < now
    if dead:
        lost = or_(lost, D.c.lease_owner.in_(dead))
    gone = select(D.c.id).where(D.c.wave_id == wave_id, D.c.state == SENDING, lost).with_for_update(skip_locked=True)
    result = conn.execute(update(D).where(among(conn, D.c.id, gone), D.c.state == SENDING, lost)
                          .values(state=PENDING, lease_owner=None, lease_expires_at=None, updated_at=now))
    return int(result.rowcount or 0)


# -- outcomes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proof:
    """What proves a message's exact words (docs/reports.md): the SHA-256 of the bytes handed to the relay, the
    definition version whose kept files built it (None: the templates folder) and their digest, and the inputs
    that rebuild it (JSON, `campaign.notices.exact.Inputs`)."""

    message_sha256: str
    version: int | None
    version_sha256: str
    inputs: str


@dataclass(frozen=True)
class Result:
    """What became of one claimed delivery."""

    id: int
    state: str  # sent | pending (retry) | failed | bounced | suppressed | skipped | expired
    at: dt.datetime
    message_id: str | None = None
    locale: str | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None
    not_before: dt.datetime | None = None  # a delivery handed back to wait for its send window
    attempts_back: int = 0  # 1 when the attempt did not happen (window, handed back): not counted
    proof: Proof | None = None  # a message was handed to the relay: what proves its words


def _values(r: Result) -> tuple[Any, ...]:
    """One outcome's row of the VALUES list, in the order of `_COLUMNS`. The error is a server's reply, cut to
    the column and rid of NUL characters (PostgreSQL's text refuses them: one relay's reply must not stop the
    send)."""
    error = (r.error or None) and r.error.replace("\0", "")[:1024]
    p = r.proof
    return (r.id, r.state, r.at if r.state == SENT else None, r.message_id, r.locale, error, r.next_attempt_at,
            r.not_before, r.attempts_back, r.at, *((p.message_sha256, p.version, p.version_sha256, p.inputs)
                                                   if p is not None else _NO_PROOF))


_NO_PROOF = (None, None, None, None)
_COLUMNS = (("r_id", D.c.id.type), ("r_state", D.c.state.type), ("r_sent_at", UTCDateTime()),
            ("r_message_id", D.c.message_id.type), ("r_locale", D.c.locale.type), ("r_error", D.c.last_error.type),
            ("r_next_attempt_at", UTCDateTime()), ("r_not_before", UTCDateTime()), ("r_back", D.c.attempts.type),
            ("r_at", UTCDateTime()), ("r_sha256", D.c.message_sha256.type), ("r_version", D.c.version.type),
            ("r_version_sha256", D.c.version_sha256.type), ("r_inputs", D.c.message_inputs.type))
ONE_STATEMENT_ROWS = 256  # outcomes written by one UPDATE … FROM (VALUES …) (14 parameters each)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters, in their order when the driver's style is positional
    positional: bool
    processors: tuple[Any, ...]
    defaults: dict[str, Any]


def _update_from(v: Any, *also: ColumnElement[bool]) -> Any:
    """The UPDATE that writes the outcomes listed by `v` (columns named as in `_COLUMNS`), each row only while
    the lease of `r_owner` holds."""
    return (update(D)
            .where(D.c.id == v.c.r_id, D.c.lease_owner == bindparam("r_owner"), D.c.state == SENDING, *also)
            .values(state=v.c.r_state,
                    sent_at=func.coalesce(v.c.r_sent_at, D.c.sent_at),
                    message_id=func.coalesce(v.c.r_message_id, D.c.message_id),
                    locale=func.coalesce(v.c.r_locale, D.c.locale),
                    last_error=v.c.r_error,
                    next_attempt_at=v.c.r_next_attempt_at,
                    not_before=func.coalesce(v.c.r_not_before, D.c.not_before),
                    attempts=D.c.attempts - v.c.r_back,
                    lease_owner=None, lease_expires_at=None,
                    updated_at=v.c.r_at,
                    # The proof of the last message handed to the relay; an outcome without one leaves it as it is.
                    **{name: case((v.c.r_sha256.is_not(None), getattr(v.c, r)), else_=D.c[name])
                       for name, r in _PROOF_COLUMNS}))


_PROOF_COLUMNS = (("message_sha256", "r_sha256"), ("version", "r_version"), ("version_sha256", "r_version_sha256"),
                  ("message_inputs", "r_inputs"))


def _compiled(stmt: Any, dialect: Dialect) -> _Compiled:
    compiled = stmt.compile(dialect=dialect)
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the names the SQL uses
    names = tuple(compiled.positiontup or binds)
    # Each parameter as the dialect writes it (SQLite: a time as Core's text, microseconds included, which the
    # type as written would leave to sqlite3's adapter: '12:00:00' at a whole second, which sorts before
    # '12:00:00.000000' and so before Core's own bounds).
    processors = tuple(binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    fixed = {name: binds[name].value for name in names}  # the statement's own literals (`sending`)
    return _Compiled(str(compiled), names, compiled.positiontup is not None, processors,
                     {k: v for k, v in fixed.items() if v is not None})


@functools.cache
def _record_rows(dialect: Dialect, n: int) -> _Compiled:
    """`WITH v AS (VALUES …) UPDATE delivery … FROM v` for n outcomes (SQLite), compiled for `dialect` once:
    Core does not cache a statement holding a VALUES clause (it would compile it on every call, 5 ms), so it
    is compiled here and run as the driver's SQL. The values stay bare (SQLite's CAST to a date type would
    make a number of the text)."""
    v = (values(*(column(name, type_) for name, type_ in _COLUMNS), name="v")
         .data([tuple(bindparam(f"{name}_{i}", type_=type_) for name, type_ in _COLUMNS) for i in range(n)])
         .cte("v"))
    return _compiled(_update_from(v), dialect)


@functools.cache
def _record_json(dialect: Dialect) -> _Compiled:
    """`UPDATE delivery … FROM jsonb_to_recordset(:rows) AS v(r_id BIGINT, …)` (PostgreSQL): the outcomes as
    one JSON parameter, so the statement's text is the same for any number of them — psycopg converts it
    once and prepares it on the server, where a text that grows with the rows is parsed anew on both sides
    every time — and the parameter is made by `json.dumps` in C (ten arrays instead: about 1.5 times the CPU,
    psycopg dumps them element by element in Python)."""
    v = (func.jsonb_to_recordset(cast(bindparam("r_rows", type_=Text()), JSONB))
         .table_valued(*(column(name, type_) for name, type_ in _COLUMNS))
         .render_derived(name="v", with_types=True))
    # The ids again, as an array: the plan then looks each row up by its key. Without them, the prepared
    # statement's generic plan takes the function for 100 rows and, `sending` being rare in the statistics
    # taken when the wave was made, walks the claim index through every `sending` entry (every worker's, and
    # the dead ones left by earlier commits) and joins each to the outcomes: 2 ms of server CPU a commit of
    # 6 under load, 15 ms with 10,000 rows in flight, where looking up the 6 keys takes 0.3.
    ids = D.c.id == any_(bindparam("r_ids", type_=ARRAY(BigInteger())))
    return _compiled(_update_from(v, ids), dialect)


_UTC = UTCDateTime()


def _json(value: Any, dialect: Dialect) -> Any:
    """A value of `_values` as JSON has it: a timestamp by the rule of every bound timestamp (UTCDateTime:
    aware, in UTC), in ISO 8601 with its offset."""
    if isinstance(value, dt.datetime):
        stamp = _UTC.process_bind_param(value, dialect)
        assert stamp is not None
        return stamp.isoformat()
    return value


def record(conn: Connection, owner: str, results: Sequence[Result]) -> int:
    """Write outcomes, each only while `owner` still holds the lease; returns how many rows it wrote
    (idempotent: a row already recorded is no longer `sending` and is left alone).

    One statement for the lot rather than an executemany: on SQLite an `UPDATE … FROM (VALUES …)` (SQLite
    steps an executemany once a row, and each step gives up the GIL and waits to get it back from the busy
    event loop: 6 outcomes 8 ms under load, this 3 ms); on PostgreSQL an `UPDATE … FROM
    jsonb_to_recordset(rows)`, one round trip of one prepared statement. Each statement stands on its own:
    the caller may run this outside a transaction."""
    if not results:
        return 0
    if conn.dialect.name == "postgresql":
        return int(conn.exec_driver_sql(*record_statement(conn.dialect, owner, results)).rowcount or 0)
    driver: Any = conn.connection.driver_connection
    before = driver.total_changes  # sqlite3 counts no rows for a WITH statement
    for start in range(0, len(results), ONE_STATEMENT_ROWS):
        chunk = results[start:start + ONE_STATEMENT_ROWS]
        given: dict[str, Any] = {"r_owner": owner}
        for i, r in enumerate(chunk):
            given.update(zip((f"{name}_{i}" for name, _ in _COLUMNS), _values(r), strict=True))
        _run(conn, _record_rows(conn.dialect, len(chunk)), given)
    return int(driver.total_changes - before)


# PostgreSQL: the setting of a connection that runs `record_statement` over and over. Its plan (each row
# looked up by its key, among the ids given) is right whatever the values; left to choose, PostgreSQL plans
# the prepared statement anew for every commit (its generic plan's estimate is the dearer), and that planning
# costs as much server CPU as the update. Raw SQL: Core has no SET. A statement rather than a libpq startup
# option, which connection poolers (PgBouncer) refuse unless told to ignore it.
RECORD_SESSION = "SET plan_cache_mode = force_generic_plan"


def record_statement(dialect: Dialect, owner: str, results: Sequence[Result]) -> tuple[str, Any]:
    """PostgreSQL: `record`'s statement and its parameters in the driver's own terms, for a caller that runs
    it on a connection of the driver's (the send loop's asynchronous commits: `campaign.connection.Database.alone`)."""
    names = [name for name, _ in _COLUMNS]
    rows = json.dumps([{name: _json(v, dialect) for name, v in zip(names, _values(r), strict=True)}
                       for r in results])
    c = _record_json(dialect)
    return c.sql, _compiled_params(c, {"r_owner": owner, "r_rows": rows, "r_ids": [r.id for r in results]})


def _compiled_params(c: _Compiled, given: dict[str, Any]) -> Any:
    """The driver's parameters of a statement compiled by `_compiled`, from the values `given` by name."""
    given = {**c.defaults, **given}
    bound = [value if (proc := c.processors[k]) is None or value is None else proc(value)
             for k, value in enumerate(given.get(name) for name in c.names)]
    return tuple(bound) if c.positional else dict(zip(c.names, bound, strict=True))


def _run(conn: Connection, c: _Compiled, given: dict[str, Any]) -> int:
    """Run a statement compiled by `_compiled` with the values `given` by name; returns its row count."""
    return int(conn.exec_driver_sql(c.sql, _compiled_params(c, given)).rowcount or 0)


# -- looking ----------------------------------------------------------------------------------------------

def counts(conn: Connection, wave_id: int) -> dict[str, int]:
    """Deliveries of a wave by state, every state present (zero included)."""
    out = dict.fromkeys(DELIVERY_STATES, 0)
    for state, n in conn.execute(select(D.c.state, func.count()).where(D.c.wave_id == wave_id)
                                 .group_by(D.c.state)).all():
        out[state] = int(n)
    return out


def sent_since(conn: Connection, wave_id: int, since: dt.datetime) -> int:
    """Deliveries of a wave sent at or after `since` (the recent rate)."""
    return int(conn.execute(select(func.count()).where(D.c.wave_id == wave_id, D.c.state == SENT,
                                                       D.c.sent_at >= since)).scalar_one())


@dataclass(frozen=True)
class Outlook:
    """Whether a wave has work left for a sender, and when the next piece comes due."""

    due_now: int
    waiting_retry: int
    waiting_window: int
    in_flight: int
    next_due: dt.datetime | None


def _outlook_columns(now: dt.datetime, ignore_window: bool) -> list[Any]:
    """The aggregates an `Outlook` is made of, over the rows selected."""
    pending = D.c.state == PENDING
    retry_later = and_(pending, D.c.next_attempt_at > now)
    no_retry_wait = or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now)
    window_later = and_(pending, D.c.not_before > now, no_retry_wait) if not ignore_window else literal(False)
    sending = D.c.state == SENDING

    def n(cond: ColumnElement[bool]) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    return [n(and_(pending, _due(now, ignore_window))).label("due"), n(retry_later).label("retry"),
            n(window_later).label("window"), n(sending).label("sending"),
            func.min(case((retry_later, D.c.next_attempt_at))).label("retry_at"),
            func.min(case((sending, D.c.lease_expires_at))).label("lease_at")]


def _outlook_of(rows: Sequence[Any]) -> Outlook:
    """An `Outlook` from the `_outlook_columns` of one or more groups of rows."""
    nexts = [t for r in rows for t in (r.retry_at, r.lease_at) if t is not None]
    return Outlook(sum(int(r.due) for r in rows), sum(int(r.retry) for r in rows),
                   sum(int(r.window) for r in rows), sum(int(r.sending) for r in rows), min(nexts) if nexts else None)


def outlook(conn: Connection, wave_id: int, now: dt.datetime, ignore_window: bool) -> Outlook:
    return _outlook_of([conn.execute(select(*_outlook_columns(now, ignore_window))
                                     .where(D.c.wave_id == wave_id)).one()])


def tally(conn: Connection, wave_id: int, now: dt.datetime, ignore_window: bool) -> tuple[dict[str, int], Outlook]:
    """`counts` and `outlook` of a wave in one pass over its rows instead of two (the end of every send reads
    both; at a million deliveries each pass is a scan of the wave)."""
    rows = conn.execute(select(D.c.state, func.count().label("n"), *_outlook_columns(now, ignore_window))
                        .where(D.c.wave_id == wave_id).group_by(D.c.state)).all()
    out = dict.fromkeys(DELIVERY_STATES, 0)
    for r in rows:
        out[r.state] = int(r.n)
    return out, _outlook_of(rows)


def pending_by_locale(conn: Connection, wave_id: int) -> dict[str, int]:
    """Pending deliveries of a wave by their recipient's locale (a dry run's preview)."""
    rows = conn.execute(select(A.c.locale, func.count()).select_from(D.join(A, A.c.id == D.c.account_id))
                        .where(D.c.wave_id == wave_id, D.c.state == PENDING)
                        .group_by(A.c.locale).order_by(A.c.locale)).all()
    return {loc: int(n) for loc, n in rows}


def first_pending(conn: Connection, wave_id: int, limit: int = 10) -> list[dict[str, str]]:
    """The first pending deliveries of a wave: account id, address and locale (a dry run's preview)."""
    rows = conn.execute(select(A.c.id, A.c.email, A.c.locale).select_from(D.join(A, A.c.id == D.c.account_id))
                        .where(D.c.wave_id == wave_id, D.c.state == PENDING).order_by(D.c.id).limit(limit)).all()
    return [{"account_id": r.id, "email": r.email, "locale": r.locale} for r in rows]


__all__ = [
    "LEASE",
    "RECORD_SESSION",
    "Claimed",
    "Outlook",
    "Proof",
    "Result",
    "claim",
    "counts",
    "expire",
    "first_pending",
    "materialize",
    "outlook",
    "pending_by_locale",
    "plan_windows",
    "reclaim",
    "record",
    "renew",
    "sent_since",
    "tally",
]
