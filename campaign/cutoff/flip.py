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

The verbs are here; the batch loop is `batches`, the dry run and a lost database `session`, the settings
service's side `outbox`, what they report `tally`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, errors
from campaign.cutoff import approval as approvals
from campaign.cutoff import stages
from campaign.cutoff.batches import Local, Progress, Remote, flip_step, refuse, rollback_step
from campaign.cutoff.batches import run as run_batches
from campaign.cutoff.outbox import SERVICE, Service, Stop
from campaign.cutoff.session import Session, session
from campaign.cutoff.tally import LISTED, ApplyTally, FlipResult, RollbackResult, device_row, iso, listed
from campaign.errors import StateError, UsageError
from campaign.models import CHANGED, HELD_BACK, WAITING
from campaign.store import changes as store
from campaign.store import steps

__all__ = ["BATCH", "FlipOptions", "FlipResult", "Options", "RollbackResult", "Service", "flip", "flip_due",
           "rollback"]

BATCH = 5000


@dataclass(frozen=True)
class Options:
    """What a rollback (and a flip) is asked for on the command line."""

    dry_run: bool = False
    batch_size: int = BATCH  # devices (changes) per transaction
    reconnect_for: float | None = None  # seconds a lost database is waited for without progress (None: the default)


@dataclass(frozen=True)
class FlipOptions(Options):
    """What a flip is asked for on the command line."""

    before_cutoff: bool = False  # flip now, though the cutoff has not come yet
    include_unnotified: bool = False  # switch the devices of accounts without a delivered notice too
    stage: int | None = None  # `[flip] stages`: run this stage (by hand: without stage_wait); None: the one going on


def flip(engine: Engine, slug: str, actor: str, options: FlipOptions = FlipOptions(), *,
         now: dt.datetime | None = None, service: Service = SERVICE, audit_empty: bool = True) -> FlipResult:
    """`campaign flip`: switch every still-affected device whose time has come; hold back the devices of
    accounts without a delivered notice (unless `include_unnotified`), let wait those whose account was
    notified later than `min_notice` ago. Refuses before the cutoff unless `before_cutoff` (or a dry run, a
    preview), and after a rollback. `now` (default: the clock) is for the scheduler and tests. `audit_empty`:
    record the audit event even when nothing changed. With `[apply] kind = "http"`, through the settings
    service (`service`; each transaction's changes go in requests of the definition's batch): the result's
    `apply` says what it did there, and `apply["paused"]` or `apply["unavailable"]` why it stopped with changes
    still waiting."""
    clock = _clock(now)
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        refuse(slug, c.state, c.rolled_back_at)
        approval = approvals.require(conn, c, "flip", dry_run=options.dry_run)
        started = clock()
        # A dry run is a preview: before the cutoff it shows what a flip now would do, and needs no flag.
        if started < c.cutoff and not options.before_cutoff and not options.dry_run:
            raise StateError(f"the cutoff of {slug!r} ({c.cutoff.isoformat()}) has not come yet: "
                             "`flip --before-cutoff` flips now")
        plan = store.Plan(c.id, c.definition, actor, c.definition.require_notice and not options.include_unnotified,
                          tuple(store.notice_waves(conn, c.id)))
    noted: dict[str, Any] = {"before_cutoff": options.before_cutoff, "include_unnotified": options.include_unnotified}
    with session(engine, slug, actor, "flip", c.id, options.dry_run, clock, options.reconnect_for) as s:
        staged = _enter_stage(s, c, options.stage, actor, started)
        if staged is not None:
            plan = replace(plan, upto=staged.stage.upto)
            noted["stage"] = staged.stage.number
        if c.definition.apply.http:
            result = _flip_remote(s, c, plan, clock, options, service, started, noted, audit_empty, staged)
        else:
            result = _flip_local(s, c, plan, clock, options, started, noted, audit_empty, staged)
    result.approval = None if approval.allowed else approval.words()
    return result


def flip_due(engine: Engine, slug: str, actor: str, now: dt.datetime | None = None) -> FlipResult:
    """For the scheduler, at the cutoff and after: flip what has come due — every still-affected device,
    the ones that waited for fair notice once their time has passed. Records an audit event only when it
    changed something."""
    return flip(engine, slug, actor, now=now, audit_empty=False)


def _enter_stage(s: Session, c: campaigns.CampaignRow, wanted: int | None, actor: str,
                 now: dt.datetime) -> stages.Run | None:
    """A staged flip (`[flip] stages`): the stage this run goes up to, begun if new; a halt that advancing found
    is kept (its own transaction) before the flip refuses. None: one stage, the flip as it always was."""
    if not c.definition.flip.staged:
        if wanted not in (None, 1):
            raise UsageError(f"--stage {wanted}: the flip of {c.slug!r} has one stage (its definition has no "
                             "[flip] stages)")
        return None

    def once() -> stages.Run | stages.Halted:
        with s.batches() as conn:
            return stages.enter(conn, c, wanted, actor, now)
    entered = s.repeat(once)
    if isinstance(entered, stages.Halted):
        raise StateError(entered.message, code=errors.FLIP_HALTED)
    return entered


def _flip_local(s: Session, c: campaigns.CampaignRow, plan: store.Plan, clock: Callable[[], dt.datetime],
                options: FlipOptions, started: dt.datetime, noted: dict[str, Any], audit_empty: bool,
                staged: stages.Run | None) -> FlipResult:
    progress = Progress()
    step = flip_step(c.slug, plan, clock, options.batch_size, Local())
    # After a lost connection, the changed count is the campaign's change rows `changed` now, less those before
    # the run; the batches are those that committed, over every run.
    _, since = s.resuming(lambda: run_batches(s.batches, step, progress), lambda: progress.batches,
                          lambda conn: store.outlook(conn, c.id).counts[CHANGED])
    changed = progress.done if since is None else since
    return _close_flip(s, c, changed, progress.batches, started, noted, None, audit_empty, staged, clock)


def _flip_remote(s: Session, c: campaigns.CampaignRow, plan: store.Plan, clock: Callable[[], dt.datetime],
                 options: FlipOptions, service: Service, started: dt.datetime, noted: dict[str, Any],
                 audit_empty: bool, staged: stages.Run | None) -> FlipResult:
    """The flip through the settings service: first the batches an earlier run left, then, batch by batch,
    record the changes (`applying`) and send them; the service's answers decide what is switched."""
    assert c.definition.apply.url is not None
    tally = ApplyTally(c.definition.apply.url)
    step = flip_step(c.slug, plan, clock, options.batch_size, Remote(c))
    batches = 0  # the transactions of the run that went to its end: none when the service stopped it
    with s.sender(c, tally, service) as sender:
        def run() -> int:
            # Run again after a lost database (as the flip without a service does): the batches recorded but not
            # answered go again first, under their Idempotency-Keys, so nothing is applied twice.
            sender.resend(store.FLIP_OP)
            return run_batches(s.batches, step, Progress(), sender.send).batches
        try:
            batches = s.repeat(run, lambda: tally.applied + tally.batches)
        except Stop as stop:
            stop.record(tally)
    return _close_flip(s, c, sender.done, batches, started, noted, tally, audit_empty, staged, clock)


def _close_flip(s: Session, c: campaigns.CampaignRow, changed: int, batches: int, started: dt.datetime,
                noted: dict[str, Any], tally: ApplyTally | None, audit_empty: bool,
                staged: stages.Run | None, clock: Callable[[], dt.datetime]) -> FlipResult:
    """The flip's result, and its audit event (none when nothing changed, unless `audit_empty`); for a staged
    flip, the stage's end and guards (`stages.close`), in the same transaction."""
    def finish(tx: db.Tx) -> FlipResult:
        result = _flip_result(tx.conn, c.slug, c.id, changed, batches, started, s.dry_run)
        apply = {}
        if tally is not None:
            tally.waiting = store.apply_state(tx.conn, c.id).waiting
            result.apply = tally.as_json()
            apply = {"apply": tally.audit()}
        finished = False
        if staged is not None:
            result.stage = stages.close(tx.conn, c, staged, tally, tx.actor, clock())
        else:
            finished = stages.close_unstaged(tx.conn, c, tally, tx.actor, {
                CHANGED: result.total_changed, HELD_BACK: result.held_back, WAITING: result.waiting})
        did = (tally.sent or tally.stopped) if tally is not None else changed
        if did or audit_empty or finished or (result.stage and (result.stage["finished"] or
                                                                  result.stage["halted"])):
            tx.note(**noted, **result.audit(), **apply)
        else:
            tx.action = None
        return result
    return s.close(finish)


def _flip_result(conn: Connection, slug: str, campaign_id: int, changed: int, batches: int, at: dt.datetime,
                 dry_run: bool) -> FlipResult:
    o = store.outlook(conn, campaign_id)
    result = FlipResult(
        campaign=slug, dry_run=dry_run, changed=changed, held_back=o.counts[HELD_BACK],
        waiting=o.counts[WAITING], next_due=o.next_due, last_due=o.last_due, held_back_why=o.held_back_why,
        waiting_devices=[{"device_id": r.device_id, "account_id": r.account_id, "notice_at": iso(r.notice_at),
                          "due_at": iso(r.due_at)} for r in store.listing(conn, campaign_id, WAITING, LISTED)]
        if o.counts[WAITING] else [],
        total_changed=o.counts[CHANGED], batches=batches, at=at)
    if o.counts[HELD_BACK]:
        listed(result.held_back_devices, map(device_row, store.listing(conn, campaign_id, HELD_BACK, LISTED)))
    return result


def rollback(engine: Engine, slug: str, actor: str, options: Options = Options(), *,
             now: dt.datetime | None = None, service: Service = SERVICE) -> RollbackResult:
    """`campaign rollback`: undo every change whose device still holds `to` and still carries the change's
    id; mark the others `left` with what the device holds now; from then on the campaign's flip refuses.
    Resumable: a rollback killed midway and started again goes on with the changes not yet decided. With
    `[apply] kind = "http"`, through the settings service, as `flip` does."""
    clock = _clock(now)
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
    started = clock()
    with session(engine, slug, actor, "rollback", c.id, options.dry_run, clock, options.reconnect_for) as s:
        if c.definition.apply.http:
            result, tally = _rollback_remote(s, c, clock, options, service, started)
        else:
            result, tally = _rollback_local(s, c, clock, options, started), None
        s.close(lambda tx: _close_rollback(tx, c.id, result, tally))
    return result


def _rollback_local(s: Session, c: campaigns.CampaignRow, clock: Callable[[], dt.datetime], options: Options,
                    started: dt.datetime) -> RollbackResult:
    # A lost database (PostgreSQL restarted) is waited out as the flip does: each batch is one transaction, and
    # a new run goes on with the changes not yet decided. The counts add up the batches that committed.
    progress = Progress()
    step = rollback_step(c, clock, options.batch_size, Local())

    def run() -> None:
        _begin_rollback(s, c.id, started)
        run_batches(s.batches, step, progress)
    s.repeat(run, lambda: progress.batches)
    return RollbackResult(c.slug, s.dry_run, rolled_back=progress.done, left=progress.left,
                          left_devices=progress.left_devices, batches=progress.batches, at=started)


def _rollback_remote(s: Session, c: campaigns.CampaignRow, clock: Callable[[], dt.datetime], options: Options,
                     service: Service, started: dt.datetime) -> tuple[RollbackResult, ApplyTally]:
    """The rollback through the settings service: settle the flip's batches still waiting (so that none lands
    after the rollback), send again the rollback's, then batch by batch: the changes whose local copy says the
    person changed the device are left here; the others are recorded (`undoing`) and sent, expecting `to`."""
    assert c.definition.apply.url is not None
    tally = ApplyTally(c.definition.apply.url)
    progress = Progress()
    step = rollback_step(c, clock, options.batch_size, Remote(c))
    with s.sender(c, tally, service) as sender:
        def run() -> None:
            # Run again after a lost database (as the rollback without a service does): what was recorded but not
            # answered goes again first, under its Idempotency-Key, so nothing is applied twice.
            _begin_rollback(s, c.id, started)
            sender.resend_flip_first()
            sender.resend(store.ROLLBACK_OP)
            run_batches(s.batches, step, progress, sender.send)
        try:
            s.repeat(run, lambda: tally.applied + tally.batches + progress.batches)
        except Stop as stop:
            stop.record(tally)
    # Left: those the local copy showed changed since, then those the service held otherwise (or did not know).
    result = RollbackResult(c.slug, s.dry_run, rolled_back=sender.done,
                            left=progress.left + tally.left + tally.unknown_device,
                            left_devices=progress.left_devices, batches=progress.batches, at=started)
    listed(result.left_devices, tally.left_devices + tally.unknown_devices)
    return result, tally


def _close_rollback(tx: db.Tx, campaign_id: int, result: RollbackResult, tally: ApplyTally | None) -> None:
    o = store.outlook(tx.conn, campaign_id)
    result.total_rolled_back, result.total_left = o.counts["rolled_back"], o.counts["left"]
    apply = {}
    if tally is not None:
        tally.waiting = store.apply_state(tx.conn, campaign_id).undoing
        result.apply = tally.as_json()
        apply = {"apply": tally.audit()}
    tx.note(**result.audit(), **apply)


def _begin_rollback(s: Session, campaign_id: int, now: dt.datetime) -> None:
    """From this commit on, the campaign's flip refuses: none is left scheduled or waiting for fair notice."""
    with s.batches() as conn:
        store.mark_campaign_rolled_back(conn, campaign_id, now)
        steps.cancel(conn, campaign_id, "flip", "the campaign was rolled back", now)  # its stages' steps too
        store.hold_back_waiting(conn, campaign_id, now)


def _clock(now: dt.datetime | None) -> Callable[[], dt.datetime]:
    return (lambda: now) if now is not None else db.utcnow
