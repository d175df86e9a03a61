"""The flip (SPEC G6), fair notice (G13) and the rollback (G7), with their change rows.

`flip` switches every still-affected device from `from` to `to` in keyset batches, each batch one
transaction that writes the change rows and the settings together; a run killed midway and started again
ends with exactly one change row per device. `require_notice` holds back the devices of accounts without a
delivered notice; `min_notice` makes a device wait until its account's first delivered notice is that old
(`flip_due`, for the scheduler, flips those that came due). `rollback` puts `from` back only where the
device still holds `to` and still carries the change's id; it leaves the others, and marks every change
rolled back or left, never deleting one. After a rollback the campaign's flip refuses.

With `[apply] kind = "http"` (G14) the setting lives in the product's settings service: each batch's changes
are first recorded here (`applying`, in an `apply_batch` with its Idempotency-Key), then sent; a change counts
as switched only once the service answered `applied`. A batch an earlier run left unanswered (a crash, the
service down, a refusal) is sent again first, under the same key. The rollback goes the same way (`undoing`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from campaign import campaigns, connection, db, errors
from campaign.cutoff import apply as service_api
from campaign.cutoff import approval as approvals
from campaign.errors import StateError
from campaign.models import APPLYING, CANCELLED, CHANGED, HELD_BACK, WAITING
from campaign.store import changes as store
from campaign.store import steps

BATCH = 5000
LISTED = 1000  # devices listed by name in a result (held back, waiting, left); the counts are always whole
RETRY = service_api.Retry()  # between tries of a batch the settings service did not answer


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


@dataclass
class FlipResult:
    """What a flip did (or, under `dry_run`, would do)."""

    campaign: str
    dry_run: bool
    changed: int  # devices switched by this run
    held_back: int  # the campaign's devices held back now (no delivered notice)
    waiting: int  # the campaign's devices waiting for fair notice now
    next_due: dt.datetime | None  # when the first of them comes due
    last_due: dt.datetime | None
    held_back_why: dict[str, int]
    held_back_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED, by device id
    waiting_devices: list[dict[str, Any]] = field(default_factory=list)
    total_changed: int = 0  # the campaign's devices changed, by this run and earlier ones
    batches: int = 0
    at: dt.datetime | None = None
    approval: str | None = None  # a dry run's word on a missing approval, which the real run refuses for
    apply: dict[str, Any] | None = None  # [apply] kind = "http": what went to the settings service (ApplyTally)

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("next_due", "last_due", "at"):
            out[key] = _iso(out[key])
        if out["apply"] is None:
            del out["apply"]
        return out


@dataclass
class RollbackResult:
    """What a rollback did (or would do)."""

    campaign: str
    dry_run: bool
    rolled_back: int  # changes undone by this run
    left: int  # changes left by this run: the person changed the setting since
    left_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED
    total_rolled_back: int = 0
    total_left: int = 0
    batches: int = 0
    at: dt.datetime | None = None
    apply: dict[str, Any] | None = None  # [apply] kind = "http": what went to the settings service (ApplyTally)

    def as_json(self) -> dict[str, Any]:
        out = {**self.__dict__, "at": _iso(self.at)}
        if out["apply"] is None:
            del out["apply"]
        return out


@dataclass
class ApplyTally:
    """What one run did with the settings service (under a dry run: would do; the service's answers unknown)."""

    url: str
    sent: int = 0  # changes sent by this run, those an earlier run left waiting included
    batches: int = 0  # batches sent and answered for
    resent_batches: int = 0  # of which an earlier run had recorded (sent again under their keys)
    applied: int = 0
    left: int = 0  # conflicts: the device did not hold `expect`
    unknown_device: int = 0
    retries: int = 0
    waiting: int = 0  # the campaign's changes still waiting for the service after this run
    paused: str | None = None  # a refusal (4xx) or an answer outside the contract: a person must look
    unavailable: str | None = None  # no usable answer after every retry: the batch waits for the next run
    left_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED
    unknown_devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stopped(self) -> str | None:
        return self.paused or self.unavailable

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def audit(self) -> dict[str, Any]:
        """The audit event's detail: the counts and reasons, without the device lists."""
        return {k: v for k, v in self.as_json().items() if k not in ("left_devices", "unknown_devices")}


Batches = Callable[[], AbstractContextManager[Connection]]


def _batches(engine: Engine, dry_conn: Connection | None) -> Batches:
    """Each batch's transaction: its own write transaction; under a dry run, the dry run's one transaction
    (rolled back at the end, so the dry run is exactly the real run, undone)."""
    if dry_conn is None:
        # `bulk`: every reference a batch writes comes from the rows it joins (the campaign, the device and its
        # account, the change row it has just written), so SQLite need not look each one up again.
        return lambda: db.write(engine, bulk=True)

    @contextmanager
    def same() -> Iterator[Connection]:
        yield dry_conn
    return same


def _refuse(slug: str, state: str, rolled_back_at: dt.datetime | None) -> None:
    if rolled_back_at is not None:
        raise StateError(f"campaign {slug!r} was rolled back at {rolled_back_at.isoformat()}: its flip refuses "
                         "(create a new campaign to retire the setting again)", code=errors.ROLLED_BACK)
    if state == CANCELLED:
        raise StateError(f"campaign {slug!r} is cancelled: it flips nothing", code=errors.CANCELLED)


def flip(engine: Engine, slug: str, actor: str, *, now: dt.datetime | None = None, before_cutoff: bool = False,
         include_unnotified: bool = False, dry_run: bool = False, batch_size: int = BATCH,
         audit_empty: bool = True, service: service_api.SettingsService | None = None,
         retry: service_api.Retry = RETRY, sleep: Callable[[float], None] = time.sleep) -> FlipResult:
    """`campaign flip`: switch every still-affected device whose time has come; hold back the devices of
    accounts without a delivered notice (unless `include_unnotified`), let wait those whose account was
    notified later than `min_notice` ago. Refuses before the cutoff unless `before_cutoff`, and after a
    rollback. `now` (default: the clock) is for the scheduler and tests. `audit_empty`: record the audit
    event even when nothing changed. With `[apply] kind = "http"`, through the settings service (`service`,
    default the definition's, `retry` between tries; each transaction's changes go in requests of the
    definition's batch): the result's `apply` says what it did there, and `apply["paused"]` or
    `apply["unavailable"]` why it stopped with changes still waiting."""
    clock: Callable[[], dt.datetime] = (lambda: now) if now is not None else db.utcnow
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        _refuse(slug, c.state, c.rolled_back_at)
        approval = approvals.require(conn, c, "flip", dry_run=dry_run)
        started = clock()
        if started < c.cutoff and not before_cutoff:
            raise StateError(f"the cutoff of {slug!r} ({c.cutoff.isoformat()}) has not come yet: "
                             "`flip --before-cutoff` flips now")
        plan = store.Plan(c.id, c.definition, actor, c.definition.require_notice and not include_unnotified,
                          tuple(store.notice_waves(conn, c.id)))
    options = {"before_cutoff": before_cutoff, "include_unnotified": include_unnotified}
    if c.definition.apply.http:
        result = _flip_http(engine, slug, c, plan, clock, started, options, dry_run, audit_empty, batch_size,
                            service, retry, sleep)
        result.approval = None if approval.allowed else approval.words()
        return result
    if dry_run:
        with db.transaction(engine, actor, "flip", campaign_id=c.id, dry_run=True, bulk=True) as tx:
            changed, batches = _flip_batches(_batches(engine, tx.conn), slug, plan, clock, batch_size)
            result = _flip_result(tx.conn, slug, plan.campaign_id, changed, batches, started, dry_run=True)
            tx.note(**options, **_flip_counts(result))
        result.approval = None if approval.allowed else approval.words()
        return result
    changed, batches = _resuming(engine, slug, plan, lambda factory: _flip_batches(factory, slug, plan, clock,
                                                                                  batch_size))

    def finish() -> FlipResult:
        with db.transaction(engine, actor, "flip", campaign_id=c.id) as tx:
            result = _flip_result(tx.conn, slug, plan.campaign_id, changed, batches, started, dry_run=False)
            if changed or audit_empty:
                tx.note(**options, **_flip_counts(result))
            else:
                tx.action = None
        return result
    return _reconnecting(engine, slug, finish)


def flip_due(engine: Engine, slug: str, actor: str, now: dt.datetime | None = None) -> FlipResult:
    """For the scheduler, at the cutoff and after: flip what has come due — every still-affected device,
    the ones that waited for fair notice once their time has passed. Records an audit event only when it
    changed something."""
    return flip(engine, slug, actor, now=now, audit_empty=False)


def _flip_batches(batches: Batches, slug: str, plan: store.Plan, clock: Callable[[], dt.datetime],
                  size: int) -> tuple[int, int]:
    """Run the flip's batches; returns (devices changed, batches)."""
    after: str | None = None
    changed = count = 0
    min_notice = plan.definition.min_notice
    while True:
        with batches() as conn:
            _refuse(slug, *store.campaign_state(conn, plan.campaign_id))  # a rollback may have begun meanwhile
            batch = store.next_batch(conn, plan, after, size)
            if batch is None:
                break
            now = clock()
            decided = store.decide(conn, plan, batch, now)
            flipped = [device for device, state, _id in decided if state == CHANGED]
            done = store.apply(conn, plan, flipped, now)
            if done != len(flipped):  # cannot happen while the batch's rows are locked: never commit it
                raise RuntimeError(f"flip batch after {after!r}: {len(flipped)} change rows, {done} devices switched")
            if min_notice is not None and len(flipped) < len(decided):
                store.set_due(conn, plan.campaign_id, [device for device, state, _id in decided if state == WAITING],
                              min_notice)
        changed += done
        count += 1
        after = batch.last
    return changed, count


def _flip_result(conn: Connection, slug: str, campaign_id: int, changed: int, batches: int, at: dt.datetime,
                 dry_run: bool) -> FlipResult:
    o = store.outlook(conn, campaign_id)
    return FlipResult(
        campaign=slug, dry_run=dry_run, changed=changed, held_back=o.counts[HELD_BACK],
        waiting=o.counts[WAITING], next_due=o.next_due, last_due=o.last_due, held_back_why=o.held_back_why,
        held_back_devices=[{"device_id": r.device_id, "account_id": r.account_id, "note": r.note}
                           for r in store.listing(conn, campaign_id, HELD_BACK, LISTED)] if o.counts[HELD_BACK] else [],
        waiting_devices=[{"device_id": r.device_id, "account_id": r.account_id, "notice_at": _iso(r.notice_at),
                          "due_at": _iso(r.due_at)} for r in store.listing(conn, campaign_id, WAITING, LISTED)]
        if o.counts[WAITING] else [],
        total_changed=o.counts[CHANGED], batches=batches, at=at)


def _flip_counts(r: FlipResult) -> dict[str, Any]:
    return {"changed": r.changed, "held_back": r.held_back, "waiting": r.waiting, "next_due": _iso(r.next_due),
            "batches": r.batches}


def rollback(engine: Engine, slug: str, actor: str, *, now: dt.datetime | None = None, dry_run: bool = False,
             batch_size: int = BATCH, service: service_api.SettingsService | None = None,
             retry: service_api.Retry = RETRY,
             sleep: Callable[[float], None] = time.sleep) -> RollbackResult:
    """`campaign rollback`: undo every change whose device still holds `to` and still carries the change's
    id; mark the others `left` with what the device holds now; from then on the campaign's flip refuses.
    Resumable: a rollback killed midway and started again goes on with the changes not yet decided. With
    `[apply] kind = "http"`, through the settings service, as `flip` does."""
    clock: Callable[[], dt.datetime] = (lambda: now) if now is not None else db.utcnow
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
    started = clock()
    if c.definition.apply.http:
        return _rollback_http(engine, slug, c, actor, clock, started, dry_run, batch_size, service, retry, sleep)
    if dry_run:
        with db.transaction(engine, actor, "rollback", campaign_id=c.id, dry_run=True, bulk=True) as tx:
            result = RollbackResult(campaign=slug, dry_run=True, rolled_back=0, left=0, at=started)
            _rollback_batches(_batches(engine, tx.conn), c, clock, batch_size, started, result)
            _rollback_totals(tx.conn, c.id, result)
            tx.note(rolled_back=result.rolled_back, left=result.left, batches=result.batches)
        return result
    # A lost database (PostgreSQL restarted) is waited out as the flip does: each batch is one transaction, and
    # a new run goes on with the changes not yet decided. The counts add up the batches that committed.
    result = RollbackResult(campaign=slug, dry_run=False, rolled_back=0, left=0, at=started)
    _reconnecting(engine, slug, lambda: _rollback_batches(_batches(engine, None), c, clock, batch_size, started,
                                                          result),
                  lambda: result.batches, command="rollback")

    def totals() -> None:
        with db.transaction(engine, actor, "rollback", campaign_id=c.id) as tx:
            _rollback_totals(tx.conn, c.id, result)
            tx.note(rolled_back=result.rolled_back, left=result.left, batches=result.batches)
    _reconnecting(engine, slug, totals, command="rollback")
    return result


def _rollback_batches(batches: Batches, c: campaigns.CampaignRow, clock: Callable[[], dt.datetime], size: int,
                      started: dt.datetime, result: RollbackResult) -> None:
    """Undo the changes batch by batch; counts into `result` as each batch commits (over several runs, when a
    lost database made one start again)."""
    d = c.definition
    after: int | None = None
    first = True
    while True:
        with batches() as conn:
            if first:  # from this commit on, the campaign's flip refuses: none is left scheduled or waiting
                store.mark_campaign_rolled_back(conn, c.id, started)
                steps.cancel(conn, c.id, "flip", "the campaign was rolled back", started)
                store.hold_back_waiting(conn, c.id, started)
                first = False
            ids = store.changed_ids(conn, c.id, after, size)
            if not ids:
                break
            now = clock()
            undone = store.undo(conn, c.id, d, ids[0], ids[-1], now)
            store.mark_rolled_back(conn, undone, now)
            left = store.mark_left(conn, c.id, d, ids[0], ids[-1], now)
        result.rolled_back += len(undone)
        result.left += len(left)
        room = LISTED - len(result.left_devices)
        result.left_devices.extend({"device_id": r.device_id, "account_id": r.account_id, "note": r.note}
                                   for r in left[:max(room, 0)])
        result.batches += 1
        after = ids[-1]


def _rollback_totals(conn: Connection, campaign_id: int, result: RollbackResult) -> None:
    o = store.outlook(conn, campaign_id)
    result.total_rolled_back, result.total_left = o.counts["rolled_back"], o.counts["left"]


# -- through the settings service ([apply] kind = "http") -------------------------------------------------

class _Stop(Exception):
    """A batch got no usable answer: the run stops there; its changes wait for the next run."""

    def __init__(self, reason: str, paused: bool) -> None:
        super().__init__(reason)
        self.reason, self.paused = reason, paused


def _key(slug: str, operation: str) -> str:
    """A new batch's Idempotency-Key: stored with the batch, and sent with it every time it goes again."""
    return f"{slug}:{operation}:{uuid.uuid4().hex}"


def _change_id(change_id: int, operation: str) -> str:
    """The contract's change_id: the change row's id for the flip; its rollback is a change of its own."""
    return str(change_id) if operation == store.FLIP_OP else f"{change_id}-rollback"


def _open(c: campaigns.CampaignRow) -> service_api.SettingsService:
    a = c.definition.apply
    return service_api.HttpSettingsService(a, c.slug, service_api.token_from_env(a))


class _Applier:
    """Sends recorded batches to the service and writes its answers, retrying under the same key."""

    def __init__(self, engine: Engine, service: service_api.SettingsService, c: campaigns.CampaignRow,
                 tally: ApplyTally, clock: Callable[[], dt.datetime], retry: service_api.Retry,
                 sleep: Callable[[float], None]) -> None:
        self.engine, self.service, self.c, self.tally = engine, service, c, tally
        self.clock, self.retry, self.sleep = clock, retry, sleep

    def send(self, batch: store.ApplyBatchRow) -> store.Settled:
        d = self.c.definition
        ours: dict[str, int] = {}
        changes = []
        for o in batch.changes:
            cid = _change_id(o.change_id, batch.operation)
            ours[cid] = o.change_id
            changes.append(service_api.Change(cid, o.device_id, d.setting, o.expect, o.value))
        tries = 0
        while True:
            tries += 1
            try:
                answers = self.service.send(batch.key, batch.operation, changes)
                break
            except service_api.Transient as exc:
                if tries >= self.retry.attempts:
                    self._failed(batch, tries, f"no usable answer after {tries} tries (last: {exc})", paused=False)
                self.tally.retries += 1
                self.sleep(self.retry.delay(tries))
            except service_api.Refused as exc:
                self._failed(batch, tries, f"the settings service refused batch {batch.id} ({len(changes)} "
                                           f"change(s), Idempotency-Key {batch.key}): {exc}", paused=True)
        with db.write(self.engine, bulk=True) as conn:
            done = store.settle(conn, self.c.id, d, batch,
                                {ours[k]: (a.status, a.value) for k, a in answers.items()}, tries, self.clock())
        t = self.tally
        t.sent += len(changes)
        t.batches += 1
        t.applied += done.applied
        left, unknown = done.left, done.unknown
        t.left += len(left)
        t.unknown_device += len(unknown)
        for rows, listing in ((left, t.left_devices), (unknown, t.unknown_devices)):
            room = max(LISTED - len(listing), 0)
            listing.extend({"device_id": r.device_id, "account_id": r.account_id, "note": r.note} for r in rows[:room])
        return done

    def resend(self, operation: str) -> None:
        """Send again, under their keys, the batches of `operation` an earlier run left unanswered."""
        with db.read(self.engine) as conn:
            left_over = store.unsettled_batches(conn, self.c.id, self.c.definition, operation)
        for batch in left_over:
            self.send(batch)
            self.tally.resent_batches += 1

    def _failed(self, batch: store.ApplyBatchRow, tries: int, reason: str, paused: bool) -> None:
        with db.write(self.engine) as conn:
            store.batch_failed(conn, batch.id, tries, self.clock(), reason, paused)
        raise _Stop(reason, paused)


def _stopped(tally: ApplyTally, stop: _Stop) -> None:
    if stop.paused:
        tally.paused = stop.reason
    else:
        tally.unavailable = stop.reason


def _flip_http(engine: Engine, slug: str, c: campaigns.CampaignRow, plan: store.Plan,
               clock: Callable[[], dt.datetime], started: dt.datetime, options: dict[str, Any], dry_run: bool,
               audit_empty: bool, batch_size: int, service: service_api.SettingsService | None,
               retry: service_api.Retry, sleep: Callable[[float], None]) -> FlipResult:
    """The flip through the settings service: first the batches an earlier run left, then, batch by batch,
    record the changes (`applying`) and send them; the service's answers decide what is switched."""
    d = c.definition
    assert d.apply.url is not None
    tally = ApplyTally(d.apply.url)
    if dry_run:
        with db.transaction(engine, plan.actor, "flip", campaign_id=c.id, dry_run=True, bulk=True) as tx:
            earlier = store.apply_state(tx.conn, c.id)  # what earlier runs left waiting: sent again first
            requests: list[store.ApplyBatchRow] = []
            recorded, batches = _record_flip(_batches(engine, tx.conn), slug, c, plan, clock, batch_size,
                                             requests.append)
            tally.sent, tally.batches = recorded + earlier.waiting, len(requests) + earlier.batches_waiting
            result = _flip_result(tx.conn, slug, c.id, recorded, batches, started, dry_run=True)
            tally.waiting = store.apply_state(tx.conn, c.id).waiting
            result.apply = tally.as_json()
            tx.note(**options, **_flip_counts(result), apply=tally.audit())
        return result
    service = service or _open(c)  # the token first: nothing is recorded without it
    applier = _Applier(engine, service, c, tally, clock, retry, sleep)
    batches = 0

    def run() -> int:
        # Run again after a lost database (as the flip without a service does): the batches recorded but not
        # answered go again first, under their Idempotency-Keys, so nothing is applied twice.
        applier.resend(store.FLIP_OP)
        return _record_flip(_batches(engine, None), slug, c, plan, clock, batch_size, applier.send)[1]
    try:
        batches = _reconnecting(engine, slug, run, lambda: tally.applied + tally.batches)
    except _Stop as stop:
        _stopped(tally, stop)
    finally:
        service.close()

    def finish() -> FlipResult:
        with db.transaction(engine, plan.actor, "flip", campaign_id=c.id) as tx:
            result = _flip_result(tx.conn, slug, c.id, tally.applied, batches, started, dry_run=False)
            tally.waiting = store.apply_state(tx.conn, c.id).waiting
            result.apply = tally.as_json()
            if tally.sent or tally.stopped or audit_empty:
                tx.note(**options, **_flip_counts(result), apply=tally.audit())
            else:
                tx.action = None
        return result
    return _reconnecting(engine, slug, finish)


def _per_transaction(size: int, batch: int) -> int:
    """Devices per transaction through the service: `size`, rounded up to whole requests of `batch`."""
    return -(-size // batch) * batch


def _record_flip(batches: Batches, slug: str, c: campaigns.CampaignRow, plan: store.Plan,
                 clock: Callable[[], dt.datetime], size: int,
                 send: Callable[[store.ApplyBatchRow], Any]) -> tuple[int, int]:
    """The flip through the settings service: keyset batches of about `size` devices, each one transaction that
    decides them and records those to switch (`applying`) in requests of the definition's batch, each with its
    key; then each request is given to `send`. Returns (changes recorded, transactions)."""
    d = c.definition
    per = d.apply.batch
    after: str | None = None
    recorded = count = 0
    while True:
        with batches() as conn:
            _refuse(slug, *store.campaign_state(conn, plan.campaign_id))
            batch = store.next_batch(conn, plan, after, _per_transaction(size, per))
            if batch is None:
                break
            now = clock()
            decided = store.decide(conn, plan, batch, now, go=APPLYING)
            going = sorted((device, i) for device, state, i in decided if state == APPLYING)
            if d.min_notice is not None and len(going) < len(decided):
                store.set_due(conn, plan.campaign_id,
                              [device for device, state, _id in decided if state == WAITING], d.min_notice)
            outs = [store.record_batch(conn, c.id, d, store.FLIP_OP, _key(slug, store.FLIP_OP), now,
                                       [(i, device) for device, i in going[k:k + per]])
                    for k in range(0, len(going), per)]
        count += 1
        after = batch.last
        for out in outs:
            recorded += len(out.changes)
            send(out)
    return recorded, count


def _rollback_http(engine: Engine, slug: str, c: campaigns.CampaignRow, actor: str,
                   clock: Callable[[], dt.datetime], started: dt.datetime, dry_run: bool, batch_size: int,
                   service: service_api.SettingsService | None, retry: service_api.Retry,
                   sleep: Callable[[float], None]) -> RollbackResult:
    """The rollback through the settings service: settle the flip's batches still waiting (so that none lands
    after the rollback), send again the rollback's, then batch by batch: the changes whose local copy says the
    person changed the device are left here; the others are recorded (`undoing`) and sent, expecting `to`."""
    d = c.definition
    assert d.apply.url is not None
    tally = ApplyTally(d.apply.url)
    result = RollbackResult(campaign=slug, dry_run=dry_run, rolled_back=0, left=0, at=started)
    if dry_run:
        with db.transaction(engine, actor, "rollback", campaign_id=c.id, dry_run=True, bulk=True) as tx:
            state = store.apply_state(tx.conn, c.id)
            _begin_rollback(tx.conn, c.id, started)
            requests: list[store.ApplyBatchRow] = []
            recorded = _record_rollback(_batches(engine, tx.conn), c, clock, batch_size, result, requests.append)
            result.rolled_back = recorded  # would be sent; the service decides which it applies
            tally.sent, tally.batches = recorded + state.waiting + state.undoing, len(requests) + state.batches_waiting
            tally.waiting = store.apply_state(tx.conn, c.id).undoing
            _rollback_totals(tx.conn, c.id, result)
            result.apply = tally.as_json()
            tx.note(rolled_back=result.rolled_back, left=result.left, batches=result.batches, apply=tally.audit())
        return result
    service = service or _open(c)
    applier = _Applier(engine, service, c, tally, clock, retry, sleep)
    flip_tally = ApplyTally(d.apply.url)  # the flip's batches still waiting, sent first
    flip_applier = _Applier(engine, service, c, flip_tally, clock, retry, sleep)

    def send(batch: store.ApplyBatchRow) -> None:
        done = applier.send(batch)
        result.rolled_back += done.applied
        result.left += len(done.left) + len(done.unknown)

    def run() -> None:
        # Run again after a lost database (as the rollback without a service does): what was recorded but not
        # answered goes again first, under its Idempotency-Key, so nothing is applied twice.
        with db.write(engine, bulk=True) as conn:
            _begin_rollback(conn, c.id, started)
        # The flip's batches still waiting first: a change applied late is then rolled back too.
        flip_applier.resend(store.FLIP_OP)
        with db.read(engine) as conn:
            left_over = store.unsettled_batches(conn, c.id, d, store.ROLLBACK_OP)
        for batch in left_over:
            send(batch)
            tally.resent_batches += 1
        _record_rollback(_batches(engine, None), c, clock, batch_size, result, send)
    try:
        _reconnecting(engine, slug, run, lambda: tally.applied + tally.batches + result.batches, command="rollback")
    except _Stop as stop:
        _stopped(tally, stop)
    finally:
        service.close()
        # What went to the service counts the flip's batches sent again (over every run) too.
        tally.sent += flip_tally.sent
        tally.resent_batches += flip_tally.resent_batches
        tally.retries += flip_tally.retries
    room = max(LISTED - len(result.left_devices), 0)
    result.left_devices.extend((tally.left_devices + tally.unknown_devices)[:room])

    def finish() -> None:
        with db.transaction(engine, actor, "rollback", campaign_id=c.id) as tx:
            _rollback_totals(tx.conn, c.id, result)
            tally.waiting = store.apply_state(tx.conn, c.id).undoing
            result.apply = tally.as_json()
            tx.note(rolled_back=result.rolled_back, left=result.left, batches=result.batches, apply=tally.audit())
    _reconnecting(engine, slug, finish, command="rollback")
    return result


def _begin_rollback(conn: Connection, campaign_id: int, now: dt.datetime) -> None:
    """From this commit on, the campaign's flip refuses: none is left scheduled or waiting for fair notice."""
    store.mark_campaign_rolled_back(conn, campaign_id, now)
    steps.cancel(conn, campaign_id, "flip", "the campaign was rolled back", now)
    store.hold_back_waiting(conn, campaign_id, now)


def _record_rollback(batches: Batches, c: campaigns.CampaignRow, clock: Callable[[], dt.datetime], size: int,
                     result: RollbackResult, send: Callable[[store.ApplyBatchRow], Any]) -> int:
    """The rollback through the settings service: batches of about `size` changes, each one transaction that
    leaves those the person changed here and records the others (`undoing`) in requests of the definition's
    batch; then each request is given to `send`. Returns the changes recorded."""
    d = c.definition
    per = d.apply.batch
    after: int | None = None
    recorded = 0
    while True:
        with batches() as conn:
            ids = store.changed_ids(conn, c.id, after, _per_transaction(size, per))
            if not ids:
                break
            now = clock()
            left = store.mark_left_here(conn, c.id, d, ids[0], ids[-1], now)
            gone = {r.id for r in left}
            going = store.devices_of(conn, [i for i in ids if i not in gone])
            outs = [store.record_batch(conn, c.id, d, store.ROLLBACK_OP, _key(c.slug, store.ROLLBACK_OP), now,
                                       going[k:k + per]) for k in range(0, len(going), per)]
        result.left += len(left)
        room = max(LISTED - len(result.left_devices), 0)
        result.left_devices.extend({"device_id": r.device_id, "account_id": r.account_id, "note": r.note}
                                   for r in left[:room])
        result.batches += 1
        after = ids[-1]
        for out in outs:
            recorded += len(out.changes)
            send(out)
    return recorded


# -- a database that goes away -----------------------------------------------------------------------------

T = TypeVar("T")


def _reconnecting(engine: Engine, slug: str, once: Callable[[], T], progress: Callable[[], int] = lambda: 0,
                  command: str = "flip") -> T:
    """`once()`, run again while the database is unreachable (the connector's rule and backoff), for up to
    `RECONNECT_FOR` seconds without `progress()` growing (each run must be safe to repeat: a flip's batch is
    one transaction, and a new run goes on with the devices still at `from`); `DatabaseLost` after that."""
    stopped = (f"the {command} of {slug!r} stopped. Every batch it committed is kept: run `campaign {command}` "
               f"again once the database is back, it goes on where it stopped and "
               f"{'switches' if command == 'flip' else 'undoes'} each device once")
    return connection.retrying(engine.dialect.name, once, stopped=stopped, progress=progress)


def _resuming(engine: Engine, slug: str, plan: store.Plan,
              run: Callable[[Batches], tuple[int, int]]) -> tuple[int, int]:
    """`run` (the flip's batches) started again after a lost connection: returns (devices changed, batches)
    of the whole run. After a loss, the changed count is the campaign's change rows `changed` now, less those
    before the run (a batch whose commit was cut off is counted if it committed)."""
    committed = 0  # transactions committed, by this run and by those cut off before it

    @contextmanager
    def counted() -> Iterator[Connection]:
        nonlocal committed
        with db.write(engine, bulk=True) as conn:
            yield conn
        committed += 1

    def changed_now() -> int:
        with db.read(engine) as conn:
            return store.outlook(conn, plan.campaign_id).counts[CHANGED]

    before = _reconnecting(engine, slug, changed_now)
    runs = 0

    def once() -> tuple[int, int]:
        nonlocal runs
        runs += 1
        return run(counted)

    changed, batches = _reconnecting(engine, slug, once, lambda: committed)
    if runs == 1:
        return changed, batches
    return _reconnecting(engine, slug, changed_now) - before, committed - 1  # the last found no batch left
