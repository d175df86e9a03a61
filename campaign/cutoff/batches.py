"""The one batch loop of the flip and the rollback (SPEC G6, G7, G14): keyset batches, each one transaction,
parameterised by what a batch does and where the setting lives.

What: a flip batch takes the next affected devices and decides each (switch; hold back without a delivered
notice; wait for fair notice, G13); a rollback batch takes the next changes still `changed`, and puts back
or leaves each. Where: `Local` — the setting is kept here, and the batch switches (or puts back) the devices
in its own transaction, writing the change rows and the settings together; `Remote` — the settings service
holds it (`[apply] kind = "http"`), so the batch records its changes (`applying`, `undoing`) in requests of
the definition's batch, each with its Idempotency-Key, and the requests are sent once it has committed.
A run killed midway and started again goes on with what is left, so each device changes once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row

from campaign import campaigns, errors
from campaign.cutoff.tally import device_row, listed
from campaign.errors import StateError
from campaign.models import APPLYING, CANCELLED, CHANGED, WAITING
from campaign.store import changes as store
from campaign.store import setbased

Batches = Callable[[], AbstractContextManager[Connection]]  # each batch's transaction
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Outcome:
    """What one batch did, in its transaction."""

    last: Any  # the keyset: the next batch starts after it
    done: int = 0  # changes made here: devices switched, changes undone
    left: Sequence[Row[Any]] = ()  # changes left, the person having changed the device: (device_id, account_id, note)
    requests: Sequence[store.ApplyBatchRow] = ()  # recorded for the settings service, sent after the commit


Step = Callable[[Connection, Any], Outcome | None]  # one batch after the keyset given; None: nothing is left


@dataclass
class Progress:
    """What the committed batches did, counted as each commits (over several runs, when a lost database made
    one start again)."""

    batches: int = 0
    done: int = 0
    left: int = 0
    left_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED


def run(batches: Batches, step: Step, progress: Progress,
        send: Callable[[store.ApplyBatchRow], Any] = lambda _request: None) -> Progress:
    """`step` batch by batch, each in a transaction of `batches`, until none is left; each batch's requests go to
    `send` once it has committed (a request is kept before it goes)."""
    after: Any = None
    while True:
        with batches() as conn:
            out = step(conn, after)
            if out is None:
                break
        progress.batches += 1
        progress.done += out.done
        progress.left += len(out.left)
        listed(progress.left_devices, map(device_row, out.left))
        after = out.last
        for request in out.requests:
            send(request)
    return progress


def refuse(slug: str, state: str, rolled_back_at: dt.datetime | None) -> None:
    """The flip refuses after a rollback (create a new campaign to retire the setting again), and once cancelled."""
    if rolled_back_at is not None:
        raise StateError(f"campaign {slug!r} was rolled back at {rolled_back_at.isoformat()}: its flip refuses "
                         "(create a new campaign to retire the setting again)", code=errors.ROLLED_BACK)
    if state == CANCELLED:
        raise StateError(f"campaign {slug!r} is cancelled: it flips nothing", code=errors.CANCELLED)


# -- what a batch does ------------------------------------------------------------------------------------

def flip_step(slug: str, plan: store.Plan, clock: Clock, size: int, where: Local | Remote) -> Step:
    """A flip batch: the next affected devices, each decided — to switch, held back (no delivered notice), or
    waiting until its account's first delivered notice is `min_notice` old — and those to switch, switched."""
    per = where.per_transaction(size)
    min_notice = plan.definition.min_notice

    def step(conn: Connection, after: str | None) -> Outcome | None:
        refuse(slug, *store.campaign_state(conn, plan.campaign_id))  # a rollback may have begun meanwhile
        batch = store.next_batch(conn, plan, after, per)
        if batch is None:
            return None
        now = clock()
        if isinstance(where, Local) and setbased.fresh(conn, plan.campaign_id, batch):
            out, waiting = where.switch_fresh(conn, plan, batch, now, after)
        else:
            decided = store.decide(conn, plan, batch, now, go=where.go)
            going = sorted((device, i) for device, state, i in decided if state == where.go)
            out = where.switch(conn, plan, batch, going, now, after)
            waiting = [device for device, state, _id in decided if state == WAITING]
        if min_notice is not None and waiting:
            store.set_due(conn, plan.campaign_id, waiting, min_notice)
        return out
    return step


def rollback_step(c: campaigns.CampaignRow, clock: Clock, size: int, where: Local | Remote) -> Step:
    """A rollback batch: the next changes still `changed`, each put back where the device still holds `to` and
    still carries the change's id, the others left with what the device holds now."""
    per = where.per_transaction(size)

    def step(conn: Connection, after: int | None) -> Outcome | None:
        ids = store.changed_ids(conn, c.id, after, per)
        if not ids:
            return None
        return where.undo(conn, c, ids, clock())
    return step


# -- where the setting lives ------------------------------------------------------------------------------

class Local:
    """The setting is kept here: a batch switches the devices (or puts them back) in its own transaction."""

    go = CHANGED

    def per_transaction(self, size: int) -> int:
        return size

    def switch(self, conn: Connection, plan: store.Plan, batch: store.Batch, going: list[tuple[str, int]],
               now: dt.datetime, after: str | None) -> Outcome:
        done = store.apply(conn, plan, [device for device, _id in going], now)
        _check(after, len(going), done)
        return Outcome(batch.last, done=done)

    def switch_fresh(self, conn: Connection, plan: store.Plan, batch: store.Batch, now: dt.datetime,
                     after: str | None) -> tuple[Outcome, list[str]]:
        """`decide` and `switch` of a batch whose range the campaign has no change row in yet (every batch of a
        first run): the same rows written, set-based, with no change row sent back to be sorted and sent again
        (about a third of a batch's time, on either database). Also returns the devices left waiting."""
        decided = setbased.decide_fresh(conn, plan, batch, now)
        done = setbased.apply_fresh(conn, plan, batch, now, decided)
        _check(after, decided.changed, done)
        return Outcome(batch.last, done=done), decided.waiting

    def undo(self, conn: Connection, c: campaigns.CampaignRow, ids: list[int], now: dt.datetime) -> Outcome:
        undone = store.undo(conn, c.id, c.definition, ids[0], ids[-1], now)
        store.mark_rolled_back(conn, undone, now)
        left = store.mark_left(conn, c.id, c.definition, ids[0], ids[-1], now)
        return Outcome(ids[-1], done=len(undone), left=left)


def _check(after: str | None, changes: int, switched: int) -> None:
    if switched != changes:  # cannot happen while the batch's rows are locked: never commit it
        raise RuntimeError(f"flip batch after {after!r}: {changes} change rows, {switched} devices switched")


class Remote:
    """The settings service holds the setting: a batch records its changes (`applying`; for a rollback
    `undoing`, but for those the local copy says the person changed since, left here) in requests of the
    definition's batch, each with its key; a change counts as made once the service answered `applied`."""

    go = APPLYING

    def __init__(self, c: campaigns.CampaignRow) -> None:
        self.c = c

    def per_transaction(self, size: int) -> int:
        """Devices per transaction: `size`, rounded up to whole requests."""
        batch = self.c.definition.apply.batch
        return -(-size // batch) * batch

    def switch(self, conn: Connection, plan: store.Plan, batch: store.Batch, going: list[tuple[str, int]],
               now: dt.datetime, after: str | None) -> Outcome:
        return Outcome(batch.last, requests=self._record(conn, store.FLIP_OP, now,
                                                         [(i, device) for device, i in going]))

    def undo(self, conn: Connection, c: campaigns.CampaignRow, ids: list[int], now: dt.datetime) -> Outcome:
        left = store.mark_left_here(conn, c.id, c.definition, ids[0], ids[-1], now)
        gone = {r.id for r in left}
        going = store.devices_of(conn, [i for i in ids if i not in gone])
        return Outcome(ids[-1], left=left, requests=self._record(conn, store.ROLLBACK_OP, now, going))

    def _record(self, conn: Connection, operation: str, now: dt.datetime,
                changes: list[tuple[int, str]]) -> list[store.ApplyBatchRow]:
        """Record `changes` (change id, device), in this order, in requests of the definition's batch."""
        c = self.c
        per = c.definition.apply.batch
        return [store.record_batch(conn, c.id, c.definition, operation, _key(c.slug, operation), now,
                                   changes[k:k + per]) for k in range(0, len(changes), per)]


def _key(slug: str, operation: str) -> str:
    """A new batch's Idempotency-Key: stored with the batch, and sent with it every time it goes again."""
    return f"{slug}:{operation}:{uuid.uuid4().hex}"
