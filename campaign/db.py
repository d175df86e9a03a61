"""Engines and transactions for SQLite and PostgreSQL; nothing is created at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from campaign.clock import CLOCK_ENV as CLOCK_ENV  # the clock is `campaign.clock`'s; re-exported for callers
from campaign.clock import UTC as UTC
from campaign.clock import UTCDateTime as UTCDateTime
from campaign.clock import utcnow as utcnow
from campaign.config import redact_url
from campaign.errors import ConfigError
from campaign.rollout import bucket
from campaign.store import audit
from campaign.store.stages import SQLITE_BUCKET

SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_AUTOCHECKPOINT = 1000  # pages: SQLite's default


def parse_url(url: str) -> URL:
    """The database URL, parsed; ConfigError (exit 2, the password hidden) for one that is not a URL or whose
    port is not a number from 1 to 65535."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        why = "its host or port is not valid" if isinstance(exc, ValueError) else "expected sqlite:///PATH or " \
            "postgresql+psycopg://USER@HOST/DB"
        raise ConfigError(f"not a database URL: {redact_url(url)!r} ({why})") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(f"not a database URL: {redact_url(url)!r} (port {parsed.port} is not from 1 to 65535)")
    return parsed


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, with SQLite set up for several processes (WAL, busy timeout, real BEGIN)."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)
        _setup_sqlite(engine)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
        except (NoSuchModuleError, ModuleNotFoundError):
            raise ConfigError("PostgreSQL needs psycopg 3: pip install 'campaign[postgres]'") from None
    else:
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://…")
    return engine


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _setup_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling begins late and never BEGIN IMMEDIATE; take it over
    # (SQLAlchemy's documented recipe), so that a read-then-write transaction holds the write
    # lock from its start instead of failing with SQLITE_BUSY half-way.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.close()
        # SQLite's own lower() folds ASCII only; suppression compares addresses by lower(), and an address may
        # be internationalized (`Üser@…` is `üser@…`). Python's, like PostgreSQL's, folds every letter.
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)
        # The staged flip's bucket of an account (PostgreSQL computes it in SQL: campaign.store.stages.bucket).
        dbapi_connection.create_function(SQLITE_BUCKET, 2, bucket, deterministic=True)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if record.info.pop("no_checkpoint", False) and dbapi_connection is not None:
            dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        # Bulk imports check references themselves, set-based, before they write (see accounts.py);
        # the pragma only takes effect outside a transaction, so it is set here, before BEGIN, and only
        # when it changes (the connection remembers).
        keys_on = not options.get("campaign_bulk")
        info = conn.connection.info
        if info.get("foreign_keys") is not keys_on:
            conn.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if keys_on else 'OFF'}")
            info["foreign_keys"] = keys_on
        if options.get("campaign_alone"):
            return  # each statement commits by itself (the driver's autocommit): see campaign.connection.Database.write
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("campaign_write") else "BEGIN")


def leave_checkpoints(conn: Connection) -> None:
    """SQLite: this connection no longer copies the write-ahead log back into the database after its commits
    (the connection that commits most, while others still do), until it goes back to the pool. The copy,
    a few times a minute under a busy send, stalls the commit that runs it for 10-30 ms. PostgreSQL: nothing."""
    if conn.dialect.name == "sqlite" and not conn.connection.info.get("no_checkpoint"):
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA wal_autocheckpoint=0")  # a pragma (no Core for it); no transaction begun for it
        conn.connection.info["no_checkpoint"] = True


@contextmanager
def write(engine: Engine, bulk: bool = False) -> Iterator[Connection]:
    """A transaction that will write: BEGIN IMMEDIATE on SQLite; commits on success. `bulk`: the caller
    has checked every foreign key itself, so SQLite need not look each one up again."""
    with engine.connect().execution_options(campaign_write=True, campaign_bulk=bulk) as conn, conn.begin():
        yield conn


@dataclass
class Tx:
    """A command's transaction: its connection, and the audit event it will record on success."""

    conn: Connection
    actor: str
    action: str | None
    campaign_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def note(self, **detail: Any) -> None:
        """Add to what the audit event says (counts, files, reasons)."""
        self.detail.update(detail)


@contextmanager
def transaction(engine: Engine, actor: str, action: str | None = None, *, campaign_id: int | None = None,
                dry_run: bool = False, bulk: bool = False) -> Iterator[Tx]:
    """The one way a command changes something: begins the transaction (BEGIN IMMEDIATE on SQLite), records
    the audit event `action` with what the body noted, and commits — or, under `dry_run`, rolls it all back,
    the audit event included, so that a dry run changes no row. An exception rolls back too."""
    with write(engine, bulk=bulk) as conn:
        tx = Tx(conn, actor, action, campaign_id, dry_run=dry_run)
        yield tx
        if tx.action is not None:  # the body may name or drop the event once it knows what it did
            audit.record(conn, actor, tx.action, tx.campaign_id, **tx.detail)
        if dry_run:
            conn.rollback()


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (a consistent snapshot); never commits anything."""
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            yield conn
        finally:
            tx.rollback()
