"""The one connector's rules for a database that goes away, for every command: one `DatabaseLost`, one
rule per dialect for "this error means the database went away" (`lost`), one backoff (`Backoff`) used from
threads (`retrying`, `call`) and from the event loop (`Backoff.next` with `asyncio.sleep`), and the send's
`Database` lanes (threads with a connection each, and PostgreSQL's asynchronous commit lanes).

Send, flip, rollback, the scheduler and the CLI all use these: a loss anywhere is the same `DatabaseLost`,
waited out the same way for `RECONNECT_FOR` seconds (a deadline that starts again whenever the work made
progress, when the caller says what progress is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from campaign import db
from campaign.errors import CampaignError
from campaign.store import deliveries

log = logging.getLogger("campaign.database")

RECONNECT_FOR = 60.0  # seconds a lost database is waited for (without progress) before the command stops
RECONNECT_MAX_DELAY = 5.0
SEND_STOPPED = ("the send stopped. Run it again once the database is back: nobody gets the wave twice, except at "
                "most the messages in flight, with the same Message-ID")

T = TypeVar("T")


class DatabaseLost(CampaignError):
    """The database stayed unreachable: the command stopped. What it committed is kept; run it again once the
    database is back (each command says how it goes on)."""

    code = "database_lost"


def lost(exc: BaseException, dialect: str) -> bool:
    """Whether `exc` means the database went away — a failure a new connection (or, on SQLite, a moment's
    wait) may cure. PostgreSQL: refused, reset, terminated, a connection invalidated. SQLite: a lock held too
    long only; its other errors (no such table, …) would not be cured by waiting."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        return dialect != "sqlite" or "locked" in str(exc.orig)
    return False


def why(exc: BaseException) -> str:
    """What the driver said, on one line, for a log or a message."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(orig).split())[:200]


class Backoff:
    """Waits between tries while the database is unreachable: 50 ms doubling up to `RECONNECT_MAX_DELAY`, for
    `retry_for` seconds (default `RECONNECT_FOR`) — counted again from the last loss after which `progress()`
    grew —, then `DatabaseLost` saying "the database is unreachable (why); " + `stopped`."""

    def __init__(self, retry_for: float | None = None, stopped: str = "the command stopped; run it again once "
                 "the database is back", progress: Callable[[], int] | None = None) -> None:
        self.retry_for = RECONNECT_FOR if retry_for is None else retry_for
        self.stopped, self.progress = stopped, progress
        self.deadline = time.monotonic() + self.retry_for
        self.delay = 0.05
        self.seen = progress() if progress is not None else 0

    def next(self, exc: BaseException, reason: str | None = None) -> float:
        """The seconds to wait before the next try after `exc`; `DatabaseLost` when the time is up."""
        if self.progress is not None and self.progress() != self.seen:  # work committed since: a new minute
            self.seen, self.delay = self.progress(), 0.05
            self.deadline = time.monotonic() + self.retry_for
        reason = " ".join((reason if reason is not None else why(exc)).split())[:200]
        delay = self.delay
        if time.monotonic() + delay > self.deadline:
            raise DatabaseLost(f"the database is unreachable ({reason}); {self.stopped}") from exc
        log.warning("database connection lost (%s); trying again in %.2f s", reason, delay)
        self.delay = min(delay * 2, RECONNECT_MAX_DELAY)
        return delay


def retrying(dialect: str, once: Callable[[], T], retry_for: float | None = None, *,
             stopped: str = "the command stopped; run it again once the database is back",
             progress: Callable[[], int] | None = None) -> T:
    """`once()`, tried again while the database is unreachable (`lost`), with `Backoff`'s waits; each run of
    `once` must be safe to repeat. Any other error is raised at once."""
    backoff: Backoff | None = None
    while True:
        try:
            return once()
        except DBAPIError as exc:
            if not lost(exc, dialect):
                raise
            if backoff is None:
                backoff = Backoff(retry_for, stopped, progress)
            time.sleep(backoff.next(exc))


def call(engine: Engine, fn: Callable[..., T], *args: Any, write: bool = True,
         retry_for: float | None = None, stopped: str = SEND_STOPPED) -> T:
    """`fn(conn, *args)` in one transaction (committed when `write`), retried on a new connection while the
    database is unreachable (see `retrying`)."""
    def once() -> T:
        with (db.write(engine) if write else db.read(engine)) as conn:
            return fn(conn, *args)
    return retrying(engine.dialect.name, once, retry_for, stopped=stopped)


def _alone(conn: Connection, on: bool) -> dict[str, Any]:
    """The execution options that make each statement commit by itself (on), or put transactions back (off):
    PostgreSQL's autocommit; on SQLite, whose driver already commits a bare statement, no BEGIN (db.py)."""
    if conn.dialect.name == "postgresql":
        return {"isolation_level": "AUTOCOMMIT" if on else conn.default_isolation_level}
    return {"campaign_alone": on}


class Database:
    """The worker's database threads: every statement of the send loop runs there, while the event loop goes
    on with SMTP. Each thread keeps its own connection (no pool checkout, no ping per transaction) and makes
    a new one when it is lost. Lanes, a thread each: "commit0", "commit1", … for the outcomes (see the send's
    `COMMIT_LANES`), "main" for the rest (claims, the reads after them, heartbeats, looks), so that a commit
    never waits behind a batch's reads.
    On SQLite the two write transactions (a commit, a claim) are short, and reads do not block writers (WAL)."""

    def __init__(self, engine: Engine, commit_lanes: int = 1, retry_for: float | None = None) -> None:
        self.engine = engine
        self.retry_for = retry_for  # seconds a lost database is waited for (None: RECONNECT_FOR), unless a call says
        self.on_loop = engine.dialect.name == "postgresql"  # see `alone`
        self._loop_connections: dict[str, Any] = {}  # `alone`'s, by lane
        self._local = threading.local()
        self._opened: list[tuple[ThreadPoolExecutor, Connection]] = []
        main = ThreadPoolExecutor(1, thread_name_prefix="campaign-db")
        self._lanes = {"main": main}
        for i in range(commit_lanes):
            self._lanes[f"commit{i}"] = ThreadPoolExecutor(1, thread_name_prefix=f"campaign-db-c{i}")

    def _connection(self, lane: ThreadPoolExecutor) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._local.conn = self.engine.connect()
            self._opened.append((lane, conn))
            if lane is not self._lanes["main"]:
                db.leave_checkpoints(conn)  # the main lane's claims and beats copy the log back
        return conn

    def _once(self, lane: ThreadPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...], write: bool,
              alone: bool = False) -> T:
        conn = self._connection(lane)
        try:
            if alone:
                # Each statement commits on its own: on PostgreSQL one round trip instead of three (BEGIN, it,
                # COMMIT); on SQLite no BEGIN IMMEDIATE and COMMIT, each a hand-off of the GIL.
                conn.execution_options(**_alone(conn, True))
                try:
                    out = fn(conn, *args)
                    conn.commit()  # ends SQLAlchemy's own record of a transaction; the database has committed
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.close()  # left in autocommit: the next transaction gets a new connection
                    self._local.conn = None
                    raise
                conn.execution_options(**_alone(conn, False))
                return out
            conn.execution_options(campaign_write=write)  # BEGIN IMMEDIATE on SQLite when it will write
            with conn.begin() as tx:
                out = fn(conn, *args)
                if not write:
                    tx.rollback()
                return out
        except (OperationalError, DBAPIError):
            with contextlib.suppress(Exception):
                conn.close()  # an invalidated connection is discarded by the pool, a live one goes back
            self._local.conn = None
            raise

    def _run(self, lane: ThreadPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...], write: bool,
             retry_for: float | None, alone: bool = False) -> T:
        return retrying(self.engine.dialect.name, lambda: self._once(lane, fn, args, write, alone),
                        self.retry_for if retry_for is None else retry_for, stopped=SEND_STOPPED)

    async def write(self, fn: Callable[..., T], *args: Any, retry_for: float | None = None,
                    lane: str = "main", alone: bool = False) -> T:
        """`fn(conn, *args)` in a transaction that commits, in the lane's thread. `alone`: each of fn's
        statements stands on its own (nothing to undo if a later one fails), so each commits by itself, without
        a transaction around them."""
        executor = self._lanes[lane]
        return await asyncio.get_running_loop().run_in_executor(executor, self._run, executor, fn, args, True,
                                                                retry_for, alone)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` in a transaction that is rolled back, in the main lane's thread."""
        executor = self._lanes["main"]
        return await asyncio.get_running_loop().run_in_executor(executor, self._run, executor, fn, args, False,
                                                                None)

    async def alone(self, lane: str, statement: tuple[str, Any], retry_for: float | None = None) -> None:
        """PostgreSQL (`on_loop`): one statement of the driver's own (see `deliveries.record_statement`) that
        stands alone and commits by itself, over the lane's asynchronous psycopg connection, awaited on the
        event loop like a socket: no thread, no hand-off of the GIL there and back — a commit of outcomes
        costs the worker a third of the CPU it does through a thread, and returns as soon as the server
        answers. Retried on a new connection while the database is unreachable, as `write` is."""
        import psycopg  # PostgreSQL's driver: installed with it (`pip install 'campaign[postgres]'`)

        backoff = Backoff(self.retry_for if retry_for is None else retry_for, SEND_STOPPED)
        while True:
            conn = self._loop_connections.get(lane)
            try:
                if conn is None or conn.closed:
                    args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                    conn = await psycopg.AsyncConnection.connect(*args, **kwargs, autocommit=True)
                    await conn.execute(deliveries.RECORD_SESSION)  # it runs record statements only
                    self._loop_connections[lane] = conn
                await conn.execute(*statement)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if isinstance(exc, psycopg.InterfaceError) and not (conn is None or conn.closed or conn.broken):
                    raise  # a mistake of ours, not a lost connection
                self._loop_connections.pop(lane, None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                await asyncio.sleep(backoff.next(exc, str(exc)))

    async def aclose(self) -> None:
        """Close `alone`'s connections, then the threads' (`close`)."""
        for conn in self._loop_connections.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._loop_connections.clear()
        self.close()

    def close(self) -> None:
        for lane, conn in self._opened:  # each in the thread that made it
            with contextlib.suppress(Exception):
                lane.submit(conn.close).result()
        for lane in set(self._lanes.values()):
            lane.shutdown(wait=True)


