"""Returned mail: the `bounce` rows (one per message taken in, the evidence and the memory that makes a second
import change nothing), finding the deliveries they are about, and the late change of a delivery's state.

A delivery is found by its reference — the 20 hex digits that open its stored Message-ID (see `campaign.verp`).
There is no index on the Message-ID (it would cost every send an index write): one scan of the ledger per
`CHUNK` references, as the import is batch work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update

from campaign.clock import UTCDateTime
from campaign.models import BOUNCE, CAMPAIGN, DELIVERY, WAVE

B, C, DL, W = BOUNCE, CAMPAIGN, DELIVERY, WAVE
CHUNK = 1000
IMPORT_LOCK = 0x63616D70_626F756E  # "campbounc": the transaction-level advisory lock of `bounces import`


def take_turn(conn: Connection) -> None:
    """Wait until no other import is taking in mail, for the rest of this transaction: two imports of the same
    mail at once must not both find it new. SQLite's BEGIN IMMEDIATE does this already; on PostgreSQL, read
    committed lets both read before either writes, so the transaction takes an advisory lock first."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(IMPORT_LOCK)))


def known(conn: Connection, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    """The `keys` taken in before: (the row's id, its outcome), by key."""
    keys = sorted(set(keys))
    out: dict[str, tuple[int, str]] = {}
    for i in range(0, len(keys), CHUNK):
        for key, id_, outcome in conn.execute(select(B.c.key, B.c.id, B.c.outcome)
                                              .where(B.c.key.in_(keys[i:i + CHUNK]))):
            out[key] = (id_, outcome)
    return out


def deliveries(conn: Connection, refs: Iterable[str]) -> dict[str, list[Any]]:
    """The deliveries whose Message-ID opens with each reference: (id, campaign_id, wave_id, account_id, state,
    email, message_id), by reference. More than one under a reference would be a digest collision: the caller
    matches none of them."""
    refs = sorted(set(refs))
    out: dict[str, list[Any]] = {}
    ref = func.substr(DL.c.message_id, 2, 20)
    for i in range(0, len(refs), CHUNK):
        stmt = (select(ref, DL.c.id, DL.c.campaign_id, DL.c.wave_id, DL.c.account_id, DL.c.state, DL.c.email,
                       DL.c.message_id)
                .where(DL.c.message_id.is_not(None), ref.in_(refs[i:i + CHUNK])))
        for row in conn.execute(stmt):
            out.setdefault(row[0], []).append(row)
    return out


def definitions(conn: Connection, campaign_ids: Iterable[int]) -> dict[int, tuple[str, str, str]]:
    """(slug, definition text, source) of each campaign."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return {}
    rows = conn.execute(select(C.c.id, C.c.slug, C.c.definition, C.c.source).where(C.c.id.in_(ids)))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def wave_names(conn: Connection, campaign_ids: Iterable[int]) -> dict[int, str]:
    """The name of each wave of these campaigns, by its id."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return {}
    return {r[0]: r[1] for r in conn.execute(select(W.c.id, W.c.name).where(W.c.campaign_id.in_(ids)))}


_MOVE = (update(DL).where(DL.c.id == bindparam("d_id"), DL.c.state == bindparam("d_from"))
         .values(state=bindparam("d_state"), last_error=bindparam("d_error"),
                 updated_at=bindparam("d_at", type_=UTCDateTime())))


def move(conn: Connection, moves: Sequence[Mapping[str, Any]], from_state: str, now: dt.datetime) -> None:
    """Move each delivery `d_id` still in `from_state` to `d_state`, with why (`d_error`): one executemany."""
    if moves:
        conn.execute(_MOVE, [{**m, "d_from": from_state, "d_at": now} for m in moves])


def record(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Keep the returned messages taken in (their keys are new: the caller checked with `known`)."""
    if rows:
        conn.execute(insert(B), [dict(r) for r in rows])


_JUDGED = ("kind", "outcome", "matched_by", "delivery_id", "campaign_id", "email", "status", "detail", "origin",
           "reported_at", "imported_at", "imported_by")
_JUDGE_AGAIN = (update(B).where(B.c.id == bindparam("b_id"), B.c.outcome == bindparam("b_was"))
                .values({c: bindparam(f"b_{c}", type_=B.c[c].type) for c in _JUDGED}))


def judge_again(conn: Connection, rows: Sequence[Mapping[str, Any]], was: str) -> None:
    """Replace what was kept of returned messages judged `was` before (`id`) by what they are judged now (the
    columns of `record`, without the key): one executemany."""
    if rows:
        conn.execute(_JUDGE_AGAIN, [{"b_id": r["id"], "b_was": was, **{f"b_{c}": r[c] for c in _JUDGED}}
                                    for r in rows])


def of_deliveries(conn: Connection, delivery_ids: Iterable[int]) -> list[Row[Any]]:
    """The returned messages about these deliveries, oldest first: (delivery_id, kind, outcome, status, detail,
    reported_at, imported_at)."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return []
    return list(conn.execute(select(B.c.delivery_id, B.c.kind, B.c.outcome, B.c.status, B.c.detail,
                                    B.c.reported_at, B.c.imported_at)
                             .where(B.c.delivery_id.in_(ids)).order_by(B.c.imported_at, B.c.id)))
