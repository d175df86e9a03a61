"""The send ledger: one row per (campaign, wave, account), written and moved set-based.

Materialize with `INSERT … SELECT`; claim batches atomically into `sending` with a lease (`UPDATE …
RETURNING` inside `BEGIN IMMEDIATE` on SQLite, `FOR UPDATE SKIP LOCKED` on PostgreSQL); record outcomes
in batches; give back the deliveries of a worker that died. The caller owns each transaction.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Connection, bindparam, text

from campaign import db
from campaign.accounts import AFFECTED_FROM, audience_where
from campaign.definition import Definition, SendWindow
from campaign.models import (
    BOUNCED,
    DELIVERY_STATES,
    EXPIRED,
    FAILED,
    PENDING,
    SENDING,
    SENT,
    SKIPPED,
    SUPPRESSED,
)

LEASE = dt.timedelta(seconds=60)
TS = db.UTCDateTime()


def timed_text(sql: str, *times: str) -> Any:
    """A text statement whose named parameters `times` are UTC timestamps."""
    return text(sql).bindparams(*(bindparam(name, type_=TS) for name in times))


# -- who is in a wave's audience ----------------------------------------------------------------------

def audience_sql(d: Definition, rule: str) -> tuple[str, dict[str, Any]]:
    """SQL selecting the account ids of a wave's audience rule, and its parameters."""
    where, params = audience_where(d.setting, d.from_value, d.countries, d.device_models)
    affected = f"SELECT a.id {AFFECTED_FROM} WHERE {where}"
    changed = "SELECT sc.account_id FROM setting_change sc WHERE sc.campaign_id = :campaign_id AND sc.state = 'changed'"
    sql = {"affected": affected, "changed": changed, "all": f"{affected} UNION {changed}"}[rule]
    return sql, params


def expanding(stmt: Any, params: dict[str, Any]) -> Any:
    for key in ("models", "countries"):
        if key in params:
            stmt = stmt.bindparams(bindparam(key, expanding=True))
    return stmt


def materialize(conn: Connection, d: Definition, campaign_id: int, wave_id: int, rule: str,
                expires: dt.datetime, now: dt.datetime) -> int:
    """Add a row for every account of the wave's audience that has none yet (idempotent); a suppressed
    address is recorded as `suppressed` and never attempted. Returns how many rows were added."""
    who, params = audience_sql(d, rule)
    stmt = expanding(timed_text(
        "INSERT INTO delivery (campaign_id, wave_id, account_id, state, email, attempts, expires_at, updated_at) "
        "SELECT :campaign_id, :wave_id, a.id, CASE WHEN EXISTS (SELECT 1 FROM suppression su "
        "WHERE lower(su.email) = lower(a.email)) THEN 'suppressed' ELSE 'pending' END, a.email, 0, :expires, :now "
        f"FROM account a WHERE a.id IN ({who}) "
        "ON CONFLICT (campaign_id, wave_id, account_id) DO NOTHING", "expires", "now"), params)
    result = conn.execute(stmt, {**params, "campaign_id": campaign_id, "wave_id": wave_id, "expires": expires,
                                 "now": now})
    return int(result.rowcount or 0)


def plan_windows(conn: Connection, wave_id: int, window: SendWindow, earliest: dt.datetime) -> int:
    """Give every pending delivery without one a `not_before`: the opening of its recipient's send window
    at or after `earliest`, in the recipient's own zone — one UPDATE per time zone."""
    from campaign.policies import WindowCache  # policies are pure; imported here to keep the graph flat

    zones = conn.execute(text(
        "SELECT DISTINCT a.timezone FROM delivery dl JOIN account a ON a.id = dl.account_id "
        "WHERE dl.wave_id = :w AND dl.state = 'pending' AND dl.not_before IS NULL"), {"w": wave_id}).scalars().all()
    cache = WindowCache(window)
    stmt = timed_text("UPDATE delivery SET not_before = :nb WHERE wave_id = :w AND state = 'pending' "
              "AND not_before IS NULL AND account_id IN (SELECT id FROM account WHERE timezone = :tz)", "nb")
    for zone in zones:
        conn.execute(stmt, {"nb": cache.next_opening(zone, earliest), "w": wave_id, "tz": zone})
    return len(zones)


# -- claims -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    account_id: str
    attempts: int  # including this one


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(conn: Connection, wave_id: int, owner: str, limit: int, now: dt.datetime,
          ignore_window: bool = False) -> list[Claimed]:
    """Move up to `limit` due deliveries of the wave into `sending`, leased to `owner`."""
    window = "" if ignore_window else " AND (not_before IS NULL OR not_before <= :now)"
    lock = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    stmt = timed_text(
        "UPDATE delivery SET state = 'sending', lease_owner = :owner, lease_expires_at = :lease, "
        "attempts = attempts + 1, updated_at = :now WHERE id IN (SELECT id FROM delivery "
        "WHERE wave_id = :w AND state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
        # No ORDER BY: the claim index hands rows out in its own order; sorting a wave's pending rows on
        # every claim would cost more than the claim.
        f"{window} LIMIT :limit{lock}) RETURNING id, account_id, attempts", "lease", "now")
    rows = conn.execute(stmt, {"owner": owner, "lease": now + LEASE, "now": now, "w": wave_id,
                               "limit": limit}).all()
    return sorted((Claimed(int(r[0]), r[1], int(r[2])) for r in rows), key=lambda c: c.id)


def renew(conn: Connection, owner: str, ids: Sequence[int], now: dt.datetime) -> None:
    conn.execute(timed_text("UPDATE delivery SET lease_expires_at = :lease WHERE lease_owner = :owner "
                    "AND state = 'sending' AND id IN :ids", "lease").bindparams(bindparam("ids", expanding=True)),
                 {"lease": now + LEASE, "owner": owner, "ids": list(ids)})


def reclaim(conn: Connection, wave_id: int, now: dt.datetime, dead_owners: Iterable[str] = ()) -> int:
    """Give back to `pending` the deliveries whose lease ran out or whose worker is known dead."""
    dead = list(dead_owners)
    clause = " OR lease_owner IN :dead" if dead else ""
    stmt = timed_text("UPDATE delivery SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, "
              "updated_at = :now WHERE wave_id = :w AND state = 'sending' "
              f"AND (lease_expires_at < :now{clause})", "now")
    if dead:
        stmt = stmt.bindparams(bindparam("dead", expanding=True))
    result = conn.execute(stmt, {"now": now, "w": wave_id, **({"dead": dead} if dead else {})})
    return int(result.rowcount or 0)


# -- outcomes ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """What became of one claimed delivery."""

    id: int
    state: str  # sent | pending (retry) | failed | bounced | suppressed | skipped | expired
    at: dt.datetime
    message_id: str | None = None
    locale: str | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None
    not_before: dt.datetime | None = None  # a delivery handed back to wait for its send window
    attempts_back: int = 0  # 1 when the attempt did not happen (window, a lease lost): not counted


_RECORD = timed_text(
    "UPDATE delivery SET state = :state, sent_at = COALESCE(:sent_at, sent_at), "
    "message_id = COALESCE(:message_id, message_id), locale = COALESCE(:locale, locale), last_error = :error, "
    "next_attempt_at = :next_attempt_at, not_before = COALESCE(:not_before, not_before), "
    "attempts = attempts - :back, lease_owner = NULL, lease_expires_at = NULL, updated_at = :at "
    "WHERE id = :id AND lease_owner = :owner AND state = 'sending'",
    "sent_at", "next_attempt_at", "not_before", "at")


def record(conn: Connection, owner: str, results: Sequence[Result]) -> int:
    """Write outcomes, each only while `owner` still holds the lease; returns how many rows it wrote."""
    if not results:
        return 0
    rows = [{"state": r.state, "sent_at": r.at if r.state == SENT else None, "message_id": r.message_id,
             "locale": r.locale, "error": (r.error or None) and r.error[:1024], "next_attempt_at": r.next_attempt_at,
             "not_before": r.not_before, "back": r.attempts_back, "at": r.at, "id": r.id, "owner": owner}
            for r in results]
    result = conn.execute(_RECORD, rows)
    return int(result.rowcount or 0)


def expire(conn: Connection, wave_id: int, now: dt.datetime) -> int:
    """Pending deliveries whose wave expired become `expired`."""
    result = conn.execute(timed_text("UPDATE delivery SET state = 'expired', updated_at = :now, "
                             "last_error = 'the wave expired before it could be sent' "
                             "WHERE wave_id = :w AND state = 'pending' AND expires_at <= :now", "now"),
                          {"now": now, "w": wave_id})
    return int(result.rowcount or 0)


# -- looking -------------------------------------------------------------------------------------------

def counts(conn: Connection, wave_id: int) -> dict[str, int]:
    """Deliveries of a wave by state, every state present (zero included)."""
    out = dict.fromkeys(DELIVERY_STATES, 0)
    for state, n in conn.execute(text("SELECT state, COUNT(*) FROM delivery WHERE wave_id = :w GROUP BY state"),
                                 {"w": wave_id}).all():
        out[state] = int(n)
    return out


@dataclass(frozen=True)
class Outlook:
    """Whether a wave has work left for a sender, and when the next piece comes due."""

    due_now: int
    waiting_retry: int
    waiting_window: int
    in_flight: int
    next_due: dt.datetime | None


def outlook(conn: Connection, wave_id: int, now: dt.datetime, ignore_window: bool) -> Outlook:
    row = conn.execute(timed_text(
        "SELECT "
        "SUM(CASE WHEN state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now) "
        "AND (:iw OR not_before IS NULL OR not_before <= :now) THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN state = 'pending' AND next_attempt_at > :now THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN state = 'pending' AND NOT :iw AND not_before > :now "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= :now) THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN state = 'sending' THEN 1 ELSE 0 END), "
        "MIN(CASE WHEN state = 'pending' AND next_attempt_at > :now THEN next_attempt_at END), "
        "MIN(CASE WHEN state = 'sending' THEN lease_expires_at END) "
        "FROM delivery WHERE wave_id = :w", "now").bindparams(bindparam("iw", type_=Boolean())),
        {"now": now, "w": wave_id, "iw": ignore_window}).one()
    retry_at = db.UTCDateTime().process_result_value(row[4], conn.dialect)
    lease_at = db.UTCDateTime().process_result_value(row[5], conn.dialect)
    nexts = [t for t in (retry_at, lease_at) if t is not None]
    return Outlook(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0),
                   min(nexts) if nexts else None)


__all__ = [
    "BOUNCED",
    "EXPIRED",
    "FAILED",
    "PENDING",
    "SENDING",
    "SENT",
    "SKIPPED",
    "SUPPRESSED",
    "Claimed",
    "Outlook",
    "Result",
    "claim",
    "counts",
    "expanding",
    "expire",
    "materialize",
    "outlook",
    "plan_windows",
    "reclaim",
    "record",
    "renew",
    "timed_text",
    "worker_id",
]
