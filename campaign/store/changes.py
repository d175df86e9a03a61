"""The flip and its rollback: setting changes (the audit trail, never deleted) written together with the
device settings they change, one keyset batch at a time.

A flip batch: `candidates` (the next affected devices in id order; on PostgreSQL their setting rows are
locked, so that an import racing with the flip cannot leave a change row without its change), `decide`
(one `INSERT … SELECT … ON CONFLICT` of their change rows: changed, held back or waiting for fair notice),
`apply` (one `UPDATE … FROM` that switches the devices decided `changed` and points each at its change).
A batch whose range holds none of the campaign's change rows yet (every batch of a first run) does the same
set-based: `campaign.store.setbased`.
A rollback batch: `undo` (one `UPDATE … FROM … RETURNING` that puts `from` back where the device still
holds `to` and still carries the change's id), then `mark_rolled_back` and `mark_left`.

With `[apply] kind = "http"` the settings service holds the setting: a flip batch's devices are decided
`applying` (not yet `changed`) and recorded in an `apply_batch` with its Idempotency-Key before anything is
sent; `settle` writes what the service answered (and the local copy it reported); a rollback batch marks its
changes `undoing` the same way.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Connection,
    Row,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    true,
    update,
)

from campaign.definition import NOTICES, Definition
from campaign.models import (
    APPLY_BATCH,
    APPLYING,
    BATCH_DONE,
    BATCH_PAUSED,
    BATCH_WAITING,
    CAMPAIGN,
    CHANGED,
    DELIVERY,
    DEVICE,
    DEVICE_SETTING,
    HELD_BACK,
    LEFT,
    ROLLED_BACK,
    SENT,
    SETTING_CHANGE,
    UNDOING,
    UNKNOWN,
    WAITING,
    WAVE,
)
from campaign.store import stages
from campaign.store._upsert import insert as upsert_insert
from campaign.store.audience import affected

C, D, S, SC, DL, W, AB = CAMPAIGN, DEVICE, DEVICE_SETTING, SETTING_CHANGE, DELIVERY, WAVE, APPLY_BATCH
OPEN = (HELD_BACK, WAITING)  # decided again by every flip run; the other states are final
HELD_NOTE = "no delivered notice (require_notice): `flip --include-unnotified` flips it anyway"
WAITING_NOTE = "fair notice: first delivered notice came less than min_notice before the flip"
APPLYING_NOTE = "recorded: waits for the settings service to apply it"
UNDOING_NOTE = "rollback recorded: waits for the settings service to apply it"


def _in(conn: Connection, column: Any, values: Sequence[Any], type_: Any) -> ColumnElement[bool]:
    """`column IN values` with one parameter whatever the count: `= ANY(array)` on PostgreSQL, a JSON
    array unpacked by `json_each` on SQLite (5,000 placeholders would cost more to compile than to run)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(type_)))
    each = func.json_each(bindparam(None, json.dumps(list(values)), type_=String)).table_valued("value")
    return column.in_(select(each.c.value))


# -- the campaign ------------------------------------------------------------------------------------

def campaign_state(conn: Connection, campaign_id: int) -> tuple[str, dt.datetime | None]:
    """(state, rolled_back_at): what a flip checks before each batch."""
    r = conn.execute(select(C.c.state, C.c.rolled_back_at).where(C.c.id == campaign_id)).one()
    return r[0], r[1]


def mark_campaign_rolled_back(conn: Connection, campaign_id: int, now: dt.datetime) -> None:
    """Record that the campaign was rolled back (from then on its flip refuses); the first instant stays."""
    conn.execute(update(C).where(C.c.id == campaign_id, C.c.rolled_back_at.is_(None)).values(rolled_back_at=now))


def hold_back_waiting(conn: Connection, campaign_id: int, now: dt.datetime) -> int:
    """A rollback ends the wait of devices waiting for fair notice: they stay as they are, held back, with why."""
    return int(conn.execute(update(SC).where(SC.c.campaign_id == campaign_id, SC.c.state == WAITING).values(
        state=HELD_BACK, decided_at=now, note="the campaign was rolled back before its fair notice ran")).rowcount or 0)


def notice_waves(conn: Connection, campaign_id: int) -> list[int]:
    """The ids of the campaign's `affected` and `not_told` waves: a `sent` delivery of one of them is a delivered
    notice (a second chance gives its own fair notice)."""
    return list(conn.execute(select(W.c.id).where(W.c.campaign_id == campaign_id, W.c.audience.in_(NOTICES))
                             .order_by(W.c.id)).scalars())


# -- the flip ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one flip run decides with: the same for each of its batches."""

    campaign_id: int
    definition: Definition
    actor: str
    require_notice: bool  # the definition's, unless --include-unnotified
    notice_waves: tuple[int, ...]
    upto: int | None = None  # a staged flip: only accounts whose bucket is below this (`campaign.rollout`)
    # The batch statements, built once per run (their values are parameters): building one and its cache key
    # cost about as much as SQLite took to run it.
    built: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def statement(self, key: Any, build: Any) -> Any:
        if key not in self.built:
            self.built[key] = build()
        return self.built[key]


@dataclass(frozen=True)
class Batch:
    """The next batch of affected devices: the ids from `first` to `last`, in id order; on PostgreSQL also
    the ids themselves (their setting rows locked), elsewhere the bounds are enough."""

    first: str
    last: str
    size: int
    ids: list[str] | None = None


def next_batch(conn: Connection, plan: Plan, after: str | None, limit: int) -> Batch | None:
    """The next `limit` affected devices after `after`, or None when there are no more.

    On PostgreSQL their setting rows stay locked until the batch commits, so that an import cannot change one
    between its change row and its switch. SQLite's write transaction (BEGIN IMMEDIATE) excludes every other
    writer, so there the bounds do, and the ids need not travel. (A device that a flip decided for good and
    that its owner set back to `from` is among them: `decide` leaves its change row, so it is not switched
    again.)"""
    stmt = affected(plan.definition, S.c.device_id)
    if after is not None:
        # the bound on both sides of the join: PostgreSQL's planner does not carry it across, and would merge
        # the device table from its start in every batch
        stmt = stmt.where(S.c.device_id > after, D.c.id > after)
    if plan.upto is not None:  # the stages begun: a few accounts in many, so the ids travel on SQLite too
        stmt = stmt.where(stages.bucket(conn, plan.definition.slug, D.c.account_id) < plan.upto)
    stmt = stmt.order_by(S.c.device_id).limit(limit)
    if conn.dialect.name == "postgresql" or plan.upto is not None:
        ids = list(conn.execute(stmt.with_for_update(of=S) if conn.dialect.name == "postgresql" else stmt).scalars())
        return Batch(ids[0], ids[-1], len(ids), ids) if ids else None
    sub = stmt.subquery()
    first, last, size = conn.execute(select(func.min(sub.c.device_id), func.max(sub.c.device_id), func.count())
                                     .select_from(sub)).one()
    return Batch(first, last, int(size)) if size else None


def _notice_at(plan: Plan) -> Any:
    """The account's first delivered notice: a delivery of an `affected` wave still `sent` (a bounce
    reported later makes it `bounced`, and then it does not count)."""
    if not plan.notice_waves:
        return cast(null(), SC.c.notice_at.type)  # typed: PostgreSQL must know it from the subquery alone
    return (select(func.min(DL.c.sent_at))
            .where(DL.c.account_id == D.c.account_id, DL.c.campaign_id == plan.campaign_id, DL.c.state == SENT,
                   DL.c.wave_id.in_(list(plan.notice_waves)))
            .scalar_subquery())


def _named_in(conn: Connection, column: Any, name: str) -> ColumnElement[bool]:
    """`_in` with a named parameter (`_ids` gives its value), for a statement built once and run per batch."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(String)))
    each = func.json_each(bindparam(name, type_=String)).table_valued("value")
    return column.in_(select(each.c.value))


def _ids(conn: Connection, ids: Sequence[str]) -> Any:
    return list(ids) if conn.dialect.name == "postgresql" else json.dumps(list(ids))


def params(conn: Connection, plan: Plan, batch: Batch, now: dt.datetime) -> dict[str, Any]:
    """The values of a batch statement's parameters: the range, the instant, the fair-notice bound, the ids."""
    since = now - plan.definition.min_notice if plan.definition.min_notice is not None else None
    return {"lo": batch.first, "hi": batch.last, "now": now, "since": since,
            "ids": _ids(conn, batch.ids) if batch.ids is not None else None}


def decisions(conn: Connection, plan: Plan, batch: Batch, go: str) -> Any:
    """The `INSERT … SELECT` of the batch's change rows, each decided (see `decide`), without its conflict
    clause; run with `params`."""
    return plan.statement(("decide", go, batch.ids is not None), lambda: _build_decisions(conn, plan, batch, go))


def _build_decisions(conn: Connection, plan: Plan, batch: Batch, go: str) -> Any:
    d = plan.definition
    ts = SC.c.decided_at.type
    lo, hi, now = bindparam("lo", type_=String), bindparam("hi", type_=String), bindparam("now", type_=ts)
    inner = (affected(d, S.c.device_id, D.c.account_id, _notice_at(plan).label("notice_at"))
             .where(S.c.device_id >= lo, S.c.device_id <= hi, D.c.id >= lo, D.c.id <= hi))
    if batch.ids is not None:
        inner = inner.where(_named_in(conn, S.c.device_id, "ids"))  # only the rows this batch has locked
    # OFFSET 0 keeps the subquery whole (neither SQLite nor PostgreSQL pulls up a subquery with an OFFSET):
    # pulled up, the account's first notice, a correlated look-up in the deliveries, was computed once for
    # every place the decision below names it (five per device), not once.
    sub = inner.offset(0).subquery()
    whens: list[tuple[ColumnElement[bool], str]] = []
    if plan.require_notice:
        whens.append((sub.c.notice_at.is_(None), HELD_BACK))
    if d.min_notice is not None:
        whens.append((and_(sub.c.notice_at.is_not(None), sub.c.notice_at > bindparam("since", type_=ts)),
                      WAITING))
    state: Any = case(*whens, else_=literal(go)) if whens else literal(go)
    notes: list[tuple[ColumnElement[bool], str]] = [(state == HELD_BACK, HELD_NOTE), (state == WAITING, WAITING_NOTE)]
    if go == APPLYING:
        notes.append((state == APPLYING, APPLYING_NOTE))
    src = select(
        literal(plan.campaign_id), sub.c.device_id, sub.c.account_id, literal(d.setting), literal(d.from_value),
        literal(d.to_value), state, literal(plan.actor), now, sub.c.notice_at,
        case((state == CHANGED, now), else_=null()),
        case(*notes, else_=null()) if whens or go != CHANGED else null(),
        stages.stage_of(conn, d.slug, d.flip, sub.c.account_id) if plan.upto is not None else null(),
    ).where(true())  # SQLite needs a WHERE to parse INSERT … SELECT … ON CONFLICT
    return upsert_insert(conn, SC).from_select(
        ["campaign_id", "device_id", "account_id", "setting", "from_value", "to_value", "state", "actor",
         "decided_at", "notice_at", "flipped_at", "note", "stage"], src)


def decide(conn: Connection, plan: Plan, batch: Batch, now: dt.datetime,
           go: str = CHANGED) -> list[tuple[str, str, int]]:
    """Write the change rows of the batch: `go` (`changed`; `applying` when a settings service applies it),
    `held_back` (no delivered notice, when required) or `waiting` (fair notice: the first notice came later
    than `now - min_notice`). A row held back or waiting from an earlier run is decided again; one decided for
    good is not touched. Returns (device_id, state, change id) of each row written."""
    ins = decisions(conn, plan, batch, go)
    x = ins.excluded
    stmt = ins.on_conflict_do_update(
        index_elements=[SC.c.campaign_id, SC.c.device_id],
        set_={"state": x.state, "actor": x.actor, "decided_at": x.decided_at, "notice_at": x.notice_at,
              # a device switched after waiting keeps when fair notice let it go (evidence); held back, none
              "due_at": case((x.state == HELD_BACK, null()), else_=SC.c.due_at), "flipped_at": x.flipped_at,
              "note": x.note},
        # decided again only when the decision differs (a second run changes nothing)
        where=and_(SC.c.state.in_(OPEN), or_(SC.c.state != x.state, SC.c.notice_at.is_distinct_from(x.notice_at))))
    return [(r[0], r[1], r[2]) for r in conn.execute(stmt.returning(SC.c.device_id, SC.c.state, SC.c.id),
                                                     params(conn, plan, batch, now)).all()]


def set_due(conn: Connection, campaign_id: int, device_ids: Sequence[str], min_notice: dt.timedelta) -> None:
    """Give the waiting change rows of these devices their fair-notice instant: first notice + `min_notice`."""
    if not device_ids:
        return
    rows = conn.execute(select(SC.c.id, SC.c.notice_at).where(
        SC.c.campaign_id == campaign_id, _in(conn, SC.c.device_id, device_ids, String), SC.c.state == WAITING)).all()
    conn.execute(update(SC).where(SC.c.id == bindparam("cid")).values(due_at=bindparam("due")),
                 [{"cid": i, "due": notice + min_notice} for i, notice in rows])


def apply(conn: Connection, plan: Plan, device_ids: Sequence[str], now: dt.datetime) -> int:
    """Switch the devices `device_ids` (decided `changed` in this batch) from `from` to `to`, each pointing at
    its change row; returns how many were switched."""
    if not device_ids:
        return 0
    d = plan.definition
    # The change's id by a correlated look-up on (campaign_id, device_id), its unique index: an UPDATE … FROM
    # would let PostgreSQL's planner, which sees the table as it was before the batch, scan it per device.
    change = (select(SC.c.id).where(SC.c.campaign_id == plan.campaign_id, SC.c.device_id == S.c.device_id)
              .scalar_subquery())
    # The ids' bounds too: without them PostgreSQL's planner read the whole table for each batch.
    stmt = (update(S)
            .where(S.c.device_id >= min(device_ids), S.c.device_id <= max(device_ids),
                   _in(conn, S.c.device_id, device_ids, String), S.c.key == d.setting, S.c.value == d.from_value)
            .values(value=d.to_value, changed_at=now, change_id=change))
    return int(conn.execute(stmt).rowcount or 0)


# -- the rollback ------------------------------------------------------------------------------------

def changed_ids(conn: Connection, campaign_id: int, after: int | None, limit: int) -> list[int]:
    """The ids of the next `limit` change rows still `changed`, after `after`."""
    stmt = select(SC.c.id).where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED)
    if after is not None:
        stmt = stmt.where(SC.c.id > after)
    return list(conn.execute(stmt.order_by(SC.c.id).limit(limit)).scalars())


def undo(conn: Connection, campaign_id: int, d: Definition, lo: int, hi: int, now: dt.datetime) -> list[int]:
    """Put `from` back on each device of the changes `lo`..`hi` that still holds `to` and still carries that
    change's id (a person who set the value since, even back to `to`, cleared it); returns the change ids
    undone. The device keeps the change's id: the value it holds again came from this change's rollback."""
    stmt = (update(S)
            .where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED, SC.c.id >= lo, SC.c.id <= hi,
                   S.c.device_id == SC.c.device_id, S.c.key == d.setting, S.c.value == d.to_value,
                   S.c.change_id == SC.c.id)
            .values(value=d.from_value, changed_at=now)
            .returning(S.c.change_id))
    return [int(i) for i in conn.execute(stmt).scalars()]


def mark_rolled_back(conn: Connection, change_ids: Sequence[int], now: dt.datetime) -> None:
    if change_ids:
        conn.execute(update(SC).where(_in(conn, SC.c.id, change_ids, BigInteger))
                     .values(state=ROLLED_BACK, rolled_back_at=now))


def mark_left(conn: Connection, campaign_id: int, d: Definition, lo: int, hi: int,
              now: dt.datetime) -> list[Row[Any]]:
    """Mark `left` the changes `lo`..`hi` still `changed` (those `undo` did not put back), each with a note of
    what the device holds now; returns (device_id, account_id, note) of each."""
    stmt = (update(SC).where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED, SC.c.id >= lo, SC.c.id <= hi)
            .values(state=LEFT, note=_left_note(d)).returning(SC.c.device_id, SC.c.account_id, SC.c.note))
    return list(conn.execute(stmt))


def _left_note(d: Definition) -> ColumnElement[str]:
    """A change left by a rollback: what the device holds now, in words."""
    current = select(S.c.value).where(S.c.device_id == SC.c.device_id, S.c.key == d.setting).scalar_subquery()
    return case(
        (current.is_(None), literal("left: the device no longer has this setting")),
        (current == d.to_value, literal(f"left: its owner set {d.to_value!r} themselves since the flip")),
        else_=literal("left: its owner changed it since the flip (now '") + current + literal("')"))


def mark_left_here(conn: Connection, campaign_id: int, d: Definition, lo: int, hi: int,
                   now: dt.datetime) -> list[Row[Any]]:
    """For a rollback through the settings service: mark `left` the changes `lo`..`hi` still `changed` whose
    local copy says that the person changed the device since (it no longer holds `to` with the change's id),
    with what it holds now; those are not sent. Returns (device_id, account_id, note, id) of each."""
    ours = (select(S.c.device_id).where(S.c.device_id == SC.c.device_id, S.c.key == d.setting,
                                        S.c.value == d.to_value, S.c.change_id == SC.c.id).exists())
    stmt = (update(SC).where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED, SC.c.id >= lo, SC.c.id <= hi,
                             ~ours)
            .values(state=LEFT, note=_left_note(d)).returning(SC.c.device_id, SC.c.account_id, SC.c.note, SC.c.id))
    return list(conn.execute(stmt))


# -- applying through the settings service ([apply] kind = "http") ----------------------------------

FLIP_OP, ROLLBACK_OP = "flip", "rollback"


@dataclass(frozen=True)
class Outgoing:
    """One change as it goes to the settings service."""

    change_id: int  # the change row
    device_id: str
    expect: str  # the value the device must hold now
    value: str  # the value to set


@dataclass(frozen=True)
class ApplyBatchRow:
    """A recorded batch: its Idempotency-Key and its changes, in change id order (the same body every time)."""

    id: int
    operation: str
    key: str
    state: str
    attempts: int
    changes: list[Outgoing]


def record_batch(conn: Connection, campaign_id: int, d: Definition, operation: str, key: str, now: dt.datetime,
                 changes: Sequence[tuple[int, str]]) -> ApplyBatchRow:
    """Record a batch before it is sent: its Idempotency-Key `key` and its `changes` (change id, device id),
    just decided `applying` (flip) or still `changed` (rollback: marked `undoing` here)."""
    ordered = sorted(changes)
    ids = [i for i, _device in ordered]
    batch_id = int(conn.execute(AB.insert().values(
        campaign_id=campaign_id, operation=operation, idempotency_key=key, state=BATCH_WAITING,
        changes=len(ids), change_ids=json.dumps(ids), attempts=0, created_at=now).returning(AB.c.id)).scalar_one())
    if operation == FLIP_OP:
        expect, value = d.from_value, d.to_value
    else:
        # By the change rows' ids (their primary key): PostgreSQL's planner, which may see the table as it was
        # before the run began, would otherwise scan the campaign's rows.
        conn.execute(update(SC).where(_in(conn, SC.c.id, ids, BigInteger), SC.c.state == CHANGED)
                     .values(state=UNDOING, note=UNDOING_NOTE))
        expect, value = d.to_value, d.from_value
    return ApplyBatchRow(batch_id, operation, key, BATCH_WAITING, 0,
                         [Outgoing(i, device, expect, value) for i, device in ordered])


def devices_of(conn: Connection, change_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(change id, device id) of these change rows, by change id."""
    if not change_ids:
        return []
    return sorted((int(i), str(device)) for i, device in conn.execute(
        select(SC.c.id, SC.c.device_id).where(_in(conn, SC.c.id, change_ids, BigInteger))))


def unsettled_batches(conn: Connection, campaign_id: int, d: Definition, operation: str) -> list[ApplyBatchRow]:
    """The campaign's batches of `operation` that the service has not answered for yet (waiting or paused), in
    the order they were recorded, each with its changes as first sent."""
    expect, value = (d.from_value, d.to_value) if operation == FLIP_OP else (d.to_value, d.from_value)
    out = []
    for b in conn.execute(select(AB.c.id, AB.c.idempotency_key, AB.c.state, AB.c.attempts, AB.c.change_ids).where(
            AB.c.campaign_id == campaign_id, AB.c.operation == operation, AB.c.state != BATCH_DONE)
            .order_by(AB.c.id)).all():
        changes = devices_of(conn, json.loads(b.change_ids))
        out.append(ApplyBatchRow(int(b.id), operation, b.idempotency_key, b.state, int(b.attempts),
                                 [Outgoing(i, device, expect, value) for i, device in changes]))
    return out


def batch_failed(conn: Connection, batch_id: int, attempts: int, now: dt.datetime, error: str,
                 paused: bool) -> None:
    """Record attempts that got no usable answer: the batch stays waiting (or is paused) with why."""
    conn.execute(update(AB).where(AB.c.id == batch_id, AB.c.state != BATCH_DONE).values(
        attempts=AB.c.attempts + attempts, sent_at=now, error=error[:1024],
        state=BATCH_PAUSED if paused else BATCH_WAITING))


@dataclass
class Settled:
    """What the service's answer to one batch did here."""

    applied: int = 0
    left: list[Row[Any]] = field(default_factory=list)  # (device_id, account_id, note) of each change left
    unknown: list[Row[Any]] = field(default_factory=list)  # the same, of each device the service did not know


def settle(conn: Connection, campaign_id: int, d: Definition, batch: ApplyBatchRow,
           answers: dict[int, tuple[str, str | None]], attempts: int, now: dt.datetime) -> Settled:
    """Write the service's answer for each change of `batch` (change id → (status, the value the device holds
    now)), as checked against the contract by `campaign.cutoff.apply` (a known status; a value reported is a setting
    value, and for `applied` the one asked for): `applied` — the change is `changed` (flip) or `rolled_back`,
    and the local copy takes the value asked for (`to`, or `from` for a rollback), never another the service
    names; `conflict` — the change is `left`, with what the device holds there, and the local copy takes that
    value as the person's own; `unknown_device` — the change is `unknown` (flip) or `left` (rollback). Then
    the batch is done. Only changes still waiting are written, so a batch settled twice changes nothing more."""
    flip = batch.operation == FLIP_OP
    waiting = APPLYING if flip else UNDOING
    done = Settled()
    groups: dict[tuple[str, str | None], list[int]] = {}
    for change_id, answer in answers.items():
        groups.setdefault(answer, []).append(change_id)
    where = (SC.c.state == waiting,)  # by primary key (see record_batch); the ids are this campaign's
    for (status, value), ids in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        mine = _in(conn, SC.c.id, ids, BigInteger)
        if status == "applied":
            values: dict[str, Any] = {"state": CHANGED, "flipped_at": now, "note": None} if flip else \
                {"state": ROLLED_BACK, "rolled_back_at": now, "note": None}
            devices = [r[0] for r in conn.execute(update(SC).where(*where, mine).values(**values)
                                                  .returning(SC.c.device_id))]
            done.applied += len(devices)
            if devices:
                _local_copy(conn, campaign_id, d, devices, d.to_value if flip else d.from_value, now, ours=True)
        elif status == "conflict":
            held = "nothing" if value is None else repr(value)
            note = (f"left: the settings service holds {held}, not {d.from_value!r}: its owner changed it there"
                    if flip else f"left: its owner changed it at the settings service since the flip (it holds "
                                 f"{held})")
            rows = list(conn.execute(update(SC).where(*where, mine).values(state=LEFT, note=note)
                                     .returning(SC.c.device_id, SC.c.account_id, SC.c.note)))
            done.left.extend(rows)
            if rows and value is not None:
                _local_copy(conn, campaign_id, d, [r[0] for r in rows], value, now, ours=False)
        else:  # unknown_device
            note = ("the settings service does not know this device (unknown_device): not switched" if flip
                    else "left: the settings service no longer knows this device (unknown_device)")
            rows = list(conn.execute(update(SC).where(*where, mine).values(state=UNKNOWN if flip else LEFT,
                                                                           note=note)
                                     .returning(SC.c.device_id, SC.c.account_id, SC.c.note)))
            done.unknown.extend(rows)
    conn.execute(update(AB).where(AB.c.id == batch.id).values(
        state=BATCH_DONE, attempts=AB.c.attempts + attempts, sent_at=now, done_at=now, error=None))
    return done


def _local_copy(conn: Connection, campaign_id: int, d: Definition, device_ids: Sequence[str], value: str,
                now: dt.datetime, ours: bool) -> None:
    """The local copy of the devices' setting takes the value the service holds: written by this campaign's
    change (`ours`: the device points at it, as a local flip leaves it), or the person's own (no change id)."""
    stmt = update(S).where(_in(conn, S.c.device_id, device_ids, String), S.c.key == d.setting)
    if ours:
        change = (select(SC.c.id).where(SC.c.campaign_id == campaign_id, SC.c.device_id == S.c.device_id)
                  .scalar_subquery())
        conn.execute(stmt.values(value=value, changed_at=now, change_id=change))
    else:  # a value it holds already keeps its time
        conn.execute(stmt.where(S.c.value != value).values(value=value, changed_at=now, change_id=None))


@dataclass(frozen=True)
class ApplyState:
    """Where the campaign's changes stand with the settings service."""

    waiting: int  # flip changes recorded and not yet answered for
    undoing: int  # rollback changes recorded and not yet answered for
    unknown: int  # devices the service did not know
    batches_waiting: int
    paused: str | None  # why the last paused batch is paused
    last_error: str | None  # the last failed attempt of a batch still waiting


def apply_state(conn: Connection, campaign_id: int) -> ApplyState:
    counts = {str(state): int(n) for state, n in conn.execute(select(SC.c.state, func.count()).where(
        SC.c.campaign_id == campaign_id, SC.c.state.in_((APPLYING, UNDOING, UNKNOWN))).group_by(SC.c.state))}
    batches = conn.execute(select(AB.c.state, AB.c.error).where(
        AB.c.campaign_id == campaign_id, AB.c.state != BATCH_DONE).order_by(AB.c.id)).all()
    paused = [b.error for b in batches if b.state == BATCH_PAUSED]
    errors = [b.error for b in batches if b.state == BATCH_WAITING and b.error]
    return ApplyState(int(counts.get(APPLYING, 0)), int(counts.get(UNDOING, 0)), int(counts.get(UNKNOWN, 0)),
                      len(batches), paused[-1] if paused else None, errors[-1] if errors else None)


# -- what a flip or rollback reports -----------------------------------------------------------------

@dataclass(frozen=True)
class Outlook:
    counts: dict[str, int]
    next_due: dt.datetime | None
    last_due: dt.datetime | None
    held_back_why: dict[str, int]


def outlook(conn: Connection, campaign_id: int) -> Outlook:
    """The campaign's change rows by state, when the waiting ones come due, why the held-back ones wait: one
    pass over its change rows."""
    counts = dict.fromkeys((CHANGED, HELD_BACK, WAITING, ROLLED_BACK, LEFT), 0)
    why: dict[str, int] = {}
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    for state, note, n, lo, hi in conn.execute(
            select(SC.c.state, SC.c.note, func.count(), func.min(SC.c.due_at), func.max(SC.c.due_at))
            .where(SC.c.campaign_id == campaign_id).group_by(SC.c.state, SC.c.note).order_by(SC.c.note)):
        counts[state] = counts.get(state, 0) + int(n)
        if state == HELD_BACK:
            why[str(note or "")] = why.get(str(note or ""), 0) + int(n)
        elif state == WAITING and lo is not None:
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    return Outlook(counts, first, last, why)


def listing(conn: Connection, campaign_id: int, state: str, limit: int) -> list[Row[Any]]:
    """(device_id, account_id, notice_at, due_at, note) of the campaign's changes in `state`, by device."""
    return list(conn.execute(
        select(SC.c.device_id, SC.c.account_id, SC.c.notice_at, SC.c.due_at, SC.c.note)
        .where(SC.c.campaign_id == campaign_id, SC.c.state == state).order_by(SC.c.device_id).limit(limit)))
