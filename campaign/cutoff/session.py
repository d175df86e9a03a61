"""One run of a flip or a rollback, real or dry: where its batches' transactions come from, how a lost database
is waited out, the transaction that closes it with its audit event, and how it reaches the settings service.

The dry run is decided here alone. It is exactly the real run, undone: every batch runs in one transaction
that is rolled back at the end, the audit event included, and `outbox.Preview` counts what would go to the
settings service instead of sending it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine

from campaign import campaigns, connection, db
from campaign.cutoff.outbox import Applier, Preview, Service, open_client
from campaign.cutoff.tally import ApplyTally
from campaign.store import changes as store

T = TypeVar("T")


class Real:
    """Each batch commits on its own; a lost database (PostgreSQL restarted) is waited out, and the run goes on
    with what is left."""

    dry_run = False

    def __init__(self, engine: Engine, slug: str, actor: str, action: str, campaign_id: int,
                 clock: Callable[[], dt.datetime], reconnect_for: float | None = None) -> None:
        self.engine, self.slug, self.actor, self.action, self.campaign_id = engine, slug, actor, action, campaign_id
        self.clock, self.reconnect_for = clock, reconnect_for

    def batches(self) -> AbstractContextManager[Connection]:
        # `bulk`: every reference a batch writes comes from the rows it joins (the campaign, the device and its
        # account, the change row it has just written), so SQLite need not look each one up again.
        return db.write(self.engine, bulk=True)

    def repeat(self, once: Callable[[], T], progress: Callable[[], int] = lambda: 0) -> T:
        """`once()`, run again while the database is unreachable (the connector's rule and backoff), for up to
        `reconnect_for` seconds (default `connection.RECONNECT_FOR`) without `progress()` growing (each run must be
        safe to repeat: a batch is one transaction, and a new run goes on with what is left); `DatabaseLost`
        after that."""
        verb = self.action
        stopped = (f"the {verb} of {self.slug!r} stopped. Every batch it committed is kept: run `campaign {verb}` "
                   f"again once the database is back, it goes on where it stopped and "
                   f"{'switches' if verb == 'flip' else 'undoes'} each device once")
        return connection.retrying(self.engine.dialect.name, once, self.reconnect_for, stopped=stopped,
                                   progress=progress)

    def resuming(self, once: Callable[[], T], progress: Callable[[], int],
                 count: Callable[[Connection], int]) -> tuple[T, int | None]:
        """`repeat(once, progress)`; and, when a lost connection made it start again, how much `count()` grew
        over the whole run (a batch whose commit was cut off is counted if it committed), else None."""
        def counted() -> int:
            with db.read(self.engine) as conn:
                return count(conn)

        before = self.repeat(counted)
        runs = 0

        def again() -> T:
            nonlocal runs
            runs += 1
            return once()

        value = self.repeat(again, progress)
        return value, (self.repeat(counted) - before if runs > 1 else None)

    def close(self, finish: Callable[[db.Tx], T]) -> T:
        """`finish` in the transaction that records the run's audit event."""
        def once() -> T:
            with db.transaction(self.engine, self.actor, self.action, campaign_id=self.campaign_id) as tx:
                return finish(tx)
        return self.repeat(once)

    @contextmanager
    def sender(self, c: campaigns.CampaignRow, tally: ApplyTally, service: Service) -> Iterator[Applier]:
        client = service.client or open_client(c)  # the token first: nothing is recorded without it
        try:
            yield Applier(self.engine, client, c, tally, self.clock, service)
        finally:
            client.close()


class Dry:
    """Every batch and the closing audit event in the one transaction `tx`, rolled back at the end."""

    dry_run = True

    def __init__(self, tx: db.Tx) -> None:
        self.tx = tx

    @contextmanager
    def batches(self) -> Iterator[Connection]:
        yield self.tx.conn

    def repeat(self, once: Callable[[], T], progress: Callable[[], int] = lambda: 0) -> T:
        return once()

    def resuming(self, once: Callable[[], T], progress: Callable[[], int],
                 count: Callable[[Connection], int]) -> tuple[T, int | None]:
        return once(), None

    def close(self, finish: Callable[[db.Tx], T]) -> T:
        return finish(self.tx)

    @contextmanager
    def sender(self, c: campaigns.CampaignRow, tally: ApplyTally, service: Service) -> Iterator[Preview]:
        yield Preview(tally, store.apply_state(self.tx.conn, c.id))  # what earlier runs left waiting goes first


Session = Real | Dry


@contextmanager
def session(engine: Engine, slug: str, actor: str, action: str, campaign_id: int, dry_run: bool,
            clock: Callable[[], dt.datetime], reconnect_for: float | None = None) -> Iterator[Session]:
    """The run of `action` (`flip`, `rollback`) on the campaign: real, or under `dry_run` the same run undone."""
    if not dry_run:
        yield Real(engine, slug, actor, action, campaign_id, clock, reconnect_for)
        return
    with db.transaction(engine, actor, action, campaign_id=campaign_id, dry_run=True, bulk=True) as tx:
        yield Dry(tx)
