"""What the evidence reads: a campaign's status (the rate of each wave, the flip's counts), every account's story in
one ordered pass (the CSV and JSON Lines reports), one person's whole story (support on the phone), and the
aggregates of the HTML report.

The per-account report is one statement: the campaign's accounts (those with a ledger row or a change row),
each joined to its delivery of every wave by the ledger's unique index and to its change rows, in account
order. It streams; nothing holds an audience in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    String,
    and_,
    case,
    exists,
    func,
    literal,
    null,
    select,
    type_coerce,
    union,
)
from sqlalchemy.sql.elements import ColumnElement

from campaign.clock import UTCDateTime
from campaign.definition import Definition
from campaign.models import (
    ACCOUNT,
    BOUNCED,
    DELIVERY,
    DEVICE,
    DEVICE_SETTING,
    EXPIRED,
    FAILED,
    HELD_BACK,
    SENT,
    SETTING_CHANGE,
    SKIPPED,
    SUPPRESSED,
    WAITING,
    WAVE,
)
from campaign.store.audience import affected

A, D, DL, S, SC, W = ACCOUNT, DEVICE, DELIVERY, DEVICE_SETTING, SETTING_CHANGE, WAVE
ENDED_WITHOUT_SENDING = (FAILED, BOUNCED, SUPPRESSED, SKIPPED, EXPIRED)
YIELD_PER = 2000


def _at(dl: Any) -> ColumnElement[Any]:
    """A delivery's moment: when it was sent; for one that ended otherwise, when it ended; else none yet."""
    return case((dl.c.state == SENT, dl.c.sent_at), (dl.c.state.in_(ENDED_WITHOUT_SENDING), dl.c.updated_at),
                else_=null())


def _iso(conn: Connection, column: Any) -> ColumnElement[str]:
    """A stored timestamp as ISO 8601 text in UTC with microseconds (`2025-03-14T07:00:00.000000+00:00`), formatted
    by the database: a million rows would otherwise spend most of their time parsing and formatting datetimes."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US') + literal("+00:00")
    # SQLite keeps naive UTC as `YYYY-MM-DD HH:MM:SS.ffffff` (UTCDateTime)
    return func.replace(type_coerce(column, String), " ", "T") + literal("+00:00")


# -- every account, in one ordered pass ------------------------------------------------------------------

ACCOUNT_COLUMNS = ("account_id", "email", "locale", "timezone")
# delivered_at: the provider's report; message_sha256: the proof of the exact words
WAVE_COLUMNS = ("state", "at", "message_id", "error", "delivered_at", "message_sha256")
DEVICE_COLUMNS = ("device_id", "from", "to", "change", "flipped_at", "rolled_back_at", "held_back", "held_back_why",
                  "due_at", "note")


@dataclass(frozen=True)
class AccountColumns:
    """Where `account_rows` puts each column, so that a reader takes a row apart by name, not by counting:
    `row[c.account]` unpacks as ACCOUNT_COLUMNS, `row[c.waves[i]]` as WAVE_COLUMNS of the i-th wave, `row[c.device]`
    as DEVICE_COLUMNS, and `row[c.account_id]` is the account's id. Slices of the row rather than a mapping: a
    million rows read by key would spend seconds on the look-ups."""

    account_id: int
    account: slice
    waves: tuple[slice, ...]
    device: slice


def account_columns(waves: int) -> AccountColumns:
    """The columns of `account_rows` for a campaign of `waves` waves."""
    a, w = len(ACCOUNT_COLUMNS), len(WAVE_COLUMNS)
    device_at = a + w * waves
    return AccountColumns(account_id=ACCOUNT_COLUMNS.index("account_id"), account=slice(0, a),
                          waves=tuple(slice(a + w * i, a + w * (i + 1)) for i in range(waves)),
                          device=slice(device_at, device_at + len(DEVICE_COLUMNS)))


def account_rows(conn: Connection, campaign_id: int, wave_ids: Sequence[int], held_back_why: str,
                 waiting_why: str, yield_per: int = YIELD_PER) -> Iterator[Row[Any]]:
    """One row per account and device of the campaign (an account without a change row: one row, its device
    columns empty), in account then device order: ACCOUNT_COLUMNS, then WAVE_COLUMNS for each wave of
    `wave_ids` in that order (all empty where the account has no row in that wave), then DEVICE_COLUMNS; where
    each stands is `account_columns(len(wave_ids))`.

    Times come as ISO 8601 text (`_iso`); `held_back` as 'true' or 'false' (empty without a device);
    `held_back_why` is `held_back_why` for a device held back, `waiting_why` and its due time for one waiting for
    fair notice."""
    ids = union(select(DL.c.account_id).where(DL.c.campaign_id == campaign_id),
                select(SC.c.account_id).where(SC.c.campaign_id == campaign_id)).subquery("ids")
    frm: Any = ids.join(A, A.c.id == ids.c.account_id)
    cols: list[Any] = [A.c.id, A.c.email, A.c.locale, A.c.timezone]
    for i, wave_id in enumerate(wave_ids):
        dl = DL.alias(f"w{i}")
        # the ledger's unique index (campaign, wave, account): one look-up per account and wave
        frm = frm.outerjoin(dl, and_(dl.c.campaign_id == campaign_id, dl.c.wave_id == wave_id,
                                     dl.c.account_id == A.c.id))
        cols += [dl.c.state, _iso(conn, _at(dl)), dl.c.message_id, dl.c.last_error, _iso(conn, dl.c.delivered_at),
                 dl.c.message_sha256]
    frm = frm.outerjoin(SC, and_(SC.c.campaign_id == campaign_id, SC.c.account_id == A.c.id))
    due = _iso(conn, SC.c.due_at)
    cols += [SC.c.device_id, SC.c.from_value, SC.c.to_value, SC.c.state, _iso(conn, SC.c.flipped_at),
             _iso(conn, SC.c.rolled_back_at),
             case((SC.c.state.in_((HELD_BACK, WAITING)), literal("true")),
                  (SC.c.device_id.is_not(None), literal("false")), else_=null()),
             case((SC.c.state == HELD_BACK, literal(held_back_why)),
                  (SC.c.state == WAITING, literal(waiting_why) + func.coalesce(literal(" until ") + due, "")),
                  else_=null()),
             due, SC.c.note]
    stmt = select(*cols).select_from(frm).order_by(ids.c.account_id, SC.c.device_id)
    # Options on the statement, not the connection: they would stick to the connection for what follows.
    yield from conn.execute(stmt.execution_options(stream_results=True, yield_per=yield_per))


# -- one person ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    account_id: str
    email: str
    name: str
    locale: str
    timezone: str
    country: str


def _person(r: Any) -> Person:
    return Person(r.id, r.email, r.name, r.locale, r.timezone, r.country)


def person(conn: Connection, account_id: str | None = None, email: str | None = None) -> list[Person]:
    """The account with this id, or the accounts with this address (matched without regard to case, as
    suppression does): a list, since one address may belong to several accounts."""
    stmt = select(A.c.id, A.c.email, A.c.name, A.c.locale, A.c.timezone, A.c.country)
    if account_id is not None:
        stmt = stmt.where(A.c.id == account_id)
    if email is not None:
        stmt = stmt.where(func.lower(A.c.email) == email.lower())
    return [_person(r) for r in conn.execute(stmt.order_by(A.c.id))]


def ledger_accounts_by_email(conn: Connection, campaign_id: int, email: str) -> list[str]:
    """Accounts the campaign mailed at this address (they may have changed their address since)."""
    return list(conn.execute(select(DL.c.account_id).distinct().where(
        DL.c.campaign_id == campaign_id, func.lower(DL.c.email) == email.lower()).order_by(DL.c.account_id))
        .scalars())


def messages(conn: Connection, campaign_id: int, account_id: str) -> list[Row[Any]]:
    """The account's ledger rows in this campaign, wave by wave: (delivery_id, wave, state, at, sent_at,
    message_id, error, email, locale, attempts, not_before, updated_at, delivered_at, accepted_by)."""
    return list(conn.execute(
        select(DL.c.id.label("delivery_id"), W.c.name.label("wave"), DL.c.state,
               type_coerce(_at(DL), UTCDateTime()).label("at"), DL.c.sent_at,
               DL.c.message_id, DL.c.last_error.label("error"), DL.c.email, DL.c.locale, DL.c.attempts, DL.c.not_before,
               DL.c.updated_at, DL.c.delivered_at, DL.c.accepted_by)
        .select_from(DL.join(W, W.c.id == DL.c.wave_id))
        .where(DL.c.campaign_id == campaign_id, DL.c.account_id == account_id).order_by(W.c.position)))


def device_changes(conn: Connection, campaign_id: int, account_id: str) -> list[Row[Any]]:
    """The account's change rows in this campaign, with each device's name and model, by device."""
    return list(conn.execute(
        select(SC.c.device_id, D.c.name, D.c.model, SC.c.setting, SC.c.from_value, SC.c.to_value, SC.c.state,
               SC.c.actor, SC.c.decided_at, SC.c.notice_at, SC.c.due_at, SC.c.flipped_at, SC.c.rolled_back_at,
               SC.c.note)
        .select_from(SC.outerjoin(D, D.c.id == SC.c.device_id))
        .where(SC.c.campaign_id == campaign_id, SC.c.account_id == account_id).order_by(SC.c.device_id)))


def undecided_devices(conn: Connection, campaign_id: int, d: Definition, account_id: str) -> list[Row[Any]]:
    """The account's devices still affected that no flip has looked at yet: (device_id, name, model, changed_at)."""
    decided = select(SC.c.device_id).where(SC.c.campaign_id == campaign_id, SC.c.account_id == account_id)
    return list(conn.execute(affected(d, D.c.id, D.c.name, D.c.model, S.c.changed_at)
                             .where(A.c.id == account_id, D.c.id.not_in(decided)).order_by(D.c.id)))


def devices_now(conn: Connection, setting: str, account_id: str) -> dict[str, tuple[str, dt.datetime]]:
    """Each device of the account with the value of `setting` it holds now and since when."""
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        select(S.c.device_id, S.c.value, S.c.changed_at).select_from(S.join(D, D.c.id == S.c.device_id))
        .where(D.c.account_id == account_id, S.c.key == setting))}


def message_proof(conn: Connection, campaign_id: int, account_id: str, wave: str) -> Row[Any] | None:
    """The account's delivery of `wave` with what proves its message: (state, message_id, sent_at, email,
    message_sha256, version, version_sha256, message_inputs); None when it has none in that wave."""
    row: Any = conn.execute(
        select(DL.c.state, DL.c.message_id, DL.c.sent_at, DL.c.email, DL.c.message_sha256, DL.c.version,
               DL.c.version_sha256, DL.c.message_inputs)
        .select_from(DL.join(W, W.c.id == DL.c.wave_id))
        .where(DL.c.campaign_id == campaign_id, DL.c.account_id == account_id, W.c.name == wave)).first()
    return row


def devices_of(conn: Connection, account_id: str) -> dict[str, tuple[str, str]]:
    """The account's devices now: id -> (name, model)."""
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        select(D.c.id, D.c.name, D.c.model).where(D.c.account_id == account_id))}


# -- the HTML report's aggregates --------------------------------------------------------------------------

FINE = 600  # seconds: the sends histogram's resolution, re-bucketed by the report


def _slot(conn: Connection, column: Any) -> Any:
    """The 10-minute slot (FINE) of a stored time, grouped by in the database."""
    if conn.dialect.name == "postgresql":
        return func.to_timestamp(func.floor(func.extract("epoch", column) / FINE) * FINE)
    # stored as `YYYY-MM-DD HH:MM:SS.ffffff`: its first 15 characters name the 10-minute slot
    return func.substr(type_coerce(column, String), 1, 15)


def _slot_time(at: Any) -> dt.datetime | None:
    """A slot as `_slot` read it back (text on SQLite, a timestamp on PostgreSQL), as an aware UTC datetime."""
    if isinstance(at, str):
        return dt.datetime.fromisoformat(at + "0:00").replace(tzinfo=dt.UTC)
    return None if at is None else at.astimezone(dt.UTC)


def delivery_summary(conn: Connection, campaign_id: int) -> list[tuple[int, str, dt.datetime | None, int]]:
    """(wave id, state, the 10-minute slot of `sent_at` or None, deliveries): in one pass over the campaign's
    ledger, its counts by wave and state, its sends over time and their span."""
    slot = _slot(conn, DL.c.sent_at)
    rows = conn.execute(select(DL.c.wave_id, DL.c.state, slot, func.count()).where(DL.c.campaign_id == campaign_id)
                        .group_by(DL.c.wave_id, DL.c.state, slot))
    return [(int(wave_id), str(state), _slot_time(at), int(n)) for wave_id, state, at, n in rows]


def change_summary(conn: Connection, campaign_id: int) -> list[tuple[str, dt.datetime, int]]:
    """("switched" or "rolled_back", the 10-minute slot, devices): when the flip switched the campaign's devices
    and when its rollback put them back, over time (a device rolled back or left was switched first)."""
    out: list[tuple[str, dt.datetime, int]] = []
    for kind, column in (("switched", SC.c.flipped_at), ("rolled_back", SC.c.rolled_back_at)):
        slot = _slot(conn, column)
        for at, n in conn.execute(select(slot, func.count()).where(SC.c.campaign_id == campaign_id,
                                                                   column.is_not(None)).group_by(slot)):
            t = _slot_time(at)
            assert t is not None
            out.append((kind, t, int(n)))
    return out


def outcomes_by_locale(conn: Connection, campaign_id: int) -> list[tuple[int, str, str, int]]:
    """(wave id, the account's locale, delivery state, count)."""
    rows = conn.execute(select(DL.c.wave_id, A.c.locale, DL.c.state, func.count())
                        .select_from(DL.join(A, A.c.id == DL.c.account_id))
                        .where(DL.c.campaign_id == campaign_id)
                        .group_by(DL.c.wave_id, A.c.locale, DL.c.state))
    return [(int(w), str(loc), str(s), int(n)) for w, loc, s, n in rows]


def ledger_accounts(conn: Connection, campaign_id: int) -> int:
    """Distinct accounts with a ledger row in the campaign (everyone it tried to tell, or recorded why not)."""
    return int(conn.execute(select(func.count(DL.c.account_id.distinct()))
                            .where(DL.c.campaign_id == campaign_id)).scalar_one())


def change_accounts(conn: Connection, campaign_id: int) -> tuple[int, int]:
    """(accounts, devices) with a change row in the campaign."""
    r = conn.execute(select(func.count(SC.c.account_id.distinct()), func.count())
                     .where(SC.c.campaign_id == campaign_id)).one()
    return int(r[0]), int(r[1])



@dataclass(frozen=True)
class Coverage:
    """Who of the affected people was told (issue 23: "was everyone told in time?")."""

    affected_accounts: int
    told_before_cutoff: int
    told_in_time: int
    bounced: int
    failed: int
    suppressed: int
    never_sent: int


def notice_coverage(conn: Connection, campaign_id: int, d: Definition, affected_wave_ids: Sequence[int]) -> Coverage:
    """The affected accounts — those the `affected` waves tried to tell (but those who left the audience before,
    `skipped`), those with a change row, and those still affected now — and how many were told: a delivered
    notice (`sent`; a late bounce makes it `bounced`, which un-tells) before the cutoff, and at least
    `min_notice` before it. The others by why: a bounce, a failure, a suppressed address, else never sent."""
    in_time_by = d.cutoff - (d.min_notice or dt.timedelta(0))
    sent = DL.c.state == SENT

    def flag(cond: ColumnElement[bool]) -> Any:
        return func.max(case((cond, 1), else_=0))

    ledger = (select(DL.c.account_id.label("account_id"),
                     flag(and_(sent, DL.c.sent_at < d.cutoff)).label("told"),
                     flag(and_(sent, DL.c.sent_at <= in_time_by)).label("in_time"),
                     flag(DL.c.state == BOUNCED).label("bounced"),
                     flag(DL.c.state == FAILED).label("failed"),
                     flag(DL.c.state == SUPPRESSED).label("suppressed"),
                     flag(DL.c.state != SKIPPED).label("counts"))
              .where(DL.c.campaign_id == campaign_id, DL.c.wave_id.in_(list(affected_wave_ids)) if affected_wave_ids
                     else literal(False))
              .group_by(DL.c.account_id)).subquery()
    counted = ledger.c.counts == 1
    untold = ledger.c.told == 0
    r = conn.execute(select(
        func.count(),
        func.coalesce(func.sum(ledger.c.told), 0),
        func.coalesce(func.sum(ledger.c.in_time), 0),
        func.coalesce(func.sum(case((and_(untold, ledger.c.bounced == 1), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(untold, ledger.c.bounced == 0, ledger.c.failed == 1), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(untold, ledger.c.bounced == 0, ledger.c.failed == 0,
                                          ledger.c.suppressed == 1), 1), else_=0)), 0),
    ).where(counted)).one()
    others = union(select(SC.c.account_id).where(SC.c.campaign_id == campaign_id), affected(d)).subquery()
    # Probed one account at a time through the ledger's unique (campaign, wave, account) index: a NOT IN over
    # the grouped ledger above made the database group it again, ten times slower at a million accounts.
    in_ledger = exists().where(DL.c.campaign_id == campaign_id, DL.c.wave_id.in_(list(affected_wave_ids)),
                               DL.c.account_id == others.c.account_id, DL.c.state != SKIPPED)
    never = int(conn.execute(select(func.count()).select_from(others)
                             .where(~in_ledger if affected_wave_ids else literal(True))).scalar_one())
    total, n_told, n_in_time, n_bounced, n_failed, n_suppressed = (int(x) for x in r)
    return Coverage(affected_accounts=total + never, told_before_cutoff=n_told, told_in_time=n_in_time,
                    bounced=n_bounced, failed=n_failed, suppressed=n_suppressed,
                    never_sent=total - n_told - n_bounced - n_failed - n_suppressed + never)


def told_by_wave(conn: Connection, campaign_id: int) -> dict[str, int]:
    """Per wave name: the accounts it delivered a message to (`sent`)."""
    rows = conn.execute(select(W.c.name, func.count(DL.c.account_id.distinct()))
                        .select_from(DL.join(W, W.c.id == DL.c.wave_id))
                        .where(DL.c.campaign_id == campaign_id, DL.c.state == SENT).group_by(W.c.name)).all()
    return {r[0]: int(r[1]) for r in rows}
