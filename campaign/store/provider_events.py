"""Provider events (`POST /events/{provider}`): the events kept (`provider_event`), the one-time tokens of signed
requests (`provider_nonce`), and a delivery's acceptance by the recipient's server (`delivered_at`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, or_, select, update

from campaign.clock import UTCDateTime
from campaign.models import DELIVERY, PROVIDER_EVENT, PROVIDER_NONCE

PE, PN, DL = PROVIDER_EVENT, PROVIDER_NONCE, DELIVERY
CHUNK = 1000


def nonce_seen(conn: Connection, provider: str, nonce: str) -> bool:
    return conn.execute(select(PN.c.nonce).where(PN.c.provider == provider, PN.c.nonce == nonce)).first() is not None


def keep_nonce(conn: Connection, provider: str, nonce: str, now: dt.datetime, forget_before: dt.datetime) -> None:
    """Remember `nonce`; forget those older than `forget_before` (a request carrying one is refused as stale
    anyway), so the table holds minutes of requests, not years."""
    conn.execute(delete(PN).where(PN.c.provider == provider, PN.c.seen_at < forget_before))
    conn.execute(insert(PN).values(provider=provider, nonce=nonce, seen_at=now))


def known(conn: Connection, provider: str, keys: Iterable[str]) -> set[str]:
    """The keys of these events taken in before."""
    keys = sorted(set(keys))
    out: set[str] = set()
    for i in range(0, len(keys), CHUNK):
        out.update(conn.execute(select(PE.c.key).where(PE.c.provider == provider, PE.c.key.in_(keys[i:i + CHUNK])))
                   .scalars())
    return out


def message_ids(conn: Connection, provider: str, provider_ids: Iterable[str]) -> dict[str, str]:
    """Our Message-ID for each provider message id an earlier event named beside it."""
    ids = sorted(set(provider_ids))
    out: dict[str, str] = {}
    for i in range(0, len(ids), CHUNK):
        for pid, mid in conn.execute(select(PE.c.provider_message_id, PE.c.message_id).where(
                PE.c.provider == provider, PE.c.provider_message_id.in_(ids[i:i + CHUNK]),
                PE.c.message_id.is_not(None))):
            out.setdefault(pid, mid)
    return out


def record(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(PE), [dict(r) for r in rows])


_DELIVERED = (update(DL).where(DL.c.id == bindparam("d_id"),
                               or_(DL.c.delivered_at.is_(None), DL.c.delivered_at > bindparam("d_at_cmp",
                                                                                               type_=UTCDateTime())))
              .values(delivered_at=bindparam("d_at", type_=UTCDateTime()), accepted_by=bindparam("d_by")))


def delivered(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record each delivery's acceptance by the recipient's server (`d_id`, `d_at`, `d_by`); the earliest report
    stands (a second one, or a replay, changes nothing)."""
    if rows:
        conn.execute(_DELIVERED, [{**r, "d_at_cmp": r["d_at"]} for r in rows])


def outcomes(conn: Connection, provider: str, keys: Iterable[str]) -> dict[str, tuple[str, int | None]]:
    """(outcome, delivery id) of these events, by key."""
    keys = sorted(set(keys))
    out: dict[str, tuple[str, int | None]] = {}
    for i in range(0, len(keys), CHUNK):
        for key, outcome, delivery_id in conn.execute(select(PE.c.key, PE.c.outcome, PE.c.delivery_id).where(
                and_(PE.c.provider == provider, PE.c.key.in_(keys[i:i + CHUNK])))):
            out[key] = (outcome, delivery_id)
    return out
