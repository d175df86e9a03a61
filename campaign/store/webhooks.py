"""The webhook outbox (issue 25 item 2): the event rows `audit.record` writes in the caller's transaction, and the
deliveries of each event to each configured endpoint, tried in the order the events were written."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, exists, func, literal, select, update

from campaign.clock import UTCDateTime
from campaign.models import CAMPAIGN, WEBHOOK_DELIVERY, WEBHOOK_EVENT
from campaign.store._upsert import insert as upsert_insert

E, WD, C = WEBHOOK_EVENT, WEBHOOK_DELIVERY, CAMPAIGN
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def enqueue(conn: Connection, audit_id: int, at: dt.datetime, campaign_id: int | None, actor: str, event_type: str,
            data: dict[str, Any]) -> None:
    """One outbox row: the event's body as every endpoint will be sent it (`{"type", "timestamp", "data"}`, the
    Standard Webhooks shape), with the campaign's slug and who acted in `data`."""
    slug = conn.execute(select(C.c.slug).where(C.c.id == campaign_id)).scalar() if campaign_id is not None else None
    body = {"type": event_type, "timestamp": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "data": {"campaign": slug, "actor": actor, **data}}
    conn.execute(E.insert().values(
        audit_event_id=audit_id, campaign_id=campaign_id, type=event_type, msg_id=f"msg_{uuid.uuid4().hex}",
        at=at, payload=json.dumps(body, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))))


def open_for(conn: Connection, endpoint: str, types: Sequence[str] | None, since: dt.datetime,
             now: dt.datetime) -> int:
    """A pending delivery to `endpoint` for every event since `since` of `types` (None: all) that has none yet:
    an endpoint added later gets what is recent, never a backlog of months. Returns the rows added."""
    has = exists().where(WD.c.event_id == E.c.id, WD.c.endpoint == endpoint)
    rows = select(E.c.id, literal(endpoint), literal(PENDING), literal(0), literal(now, UTCDateTime())) \
        .where(E.c.at >= since, ~has)
    if types is not None:
        rows = rows.where(E.c.type.in_(list(types)))
    stmt = upsert_insert(conn, WD).from_select(["event_id", "endpoint", "state", "attempts", "created_at"], rows) \
        .on_conflict_do_nothing(index_elements=["event_id", "endpoint"])
    return int(conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount or 0)


@dataclass(frozen=True)
class Due:
    """The next delivery of an endpoint, with its event."""

    id: int
    attempts: int
    next_attempt_at: dt.datetime | None
    event_type: str
    msg_id: str
    at: dt.datetime
    payload: str


def head(conn: Connection, endpoint: str) -> Due | None:
    """The endpoint's oldest delivery not yet settled (by the order its events were written), if any."""
    r = conn.execute(select(WD.c.id, WD.c.attempts, WD.c.next_attempt_at, E.c.type, E.c.msg_id, E.c.at, E.c.payload)
                     .select_from(WD.join(E, E.c.id == WD.c.event_id))
                     .where(WD.c.endpoint == endpoint, WD.c.state == PENDING)
                     .order_by(WD.c.event_id).limit(1)).first()
    return Due(*r) if r is not None else None


def settle(conn: Connection, delivery_id: int, state: str, attempts: int, now: dt.datetime, *,
           status: int | None = None, error: str | None = None, next_at: dt.datetime | None = None) -> None:
    """What one attempt (or giving up) left: the state, the attempts, the last answer, when to try again."""
    conn.execute(update(WD).where(WD.c.id == delivery_id).values(
        state=state, attempts=attempts, last_attempt_at=now, last_status=status,
        last_error=error[:1024] if error else None, next_attempt_at=next_at,
        delivered_at=now if state == DELIVERED else None))


def give_up_older(conn: Connection, endpoint: str, before: dt.datetime, now: dt.datetime) -> int:
    """The endpoint's pending deliveries of events written before `before` (the maximum age) are given up."""
    old = select(E.c.id).where(E.c.at < before)
    return int(conn.execute(update(WD).where(WD.c.endpoint == endpoint, WD.c.state == PENDING,
                                             WD.c.event_id.in_(old))
                            .values(state=FAILED, next_attempt_at=None, last_attempt_at=now,
                                    last_error=func.coalesce(WD.c.last_error + literal(" — "), literal(""))
                                    + literal("given up: older than the maximum age")))
               .rowcount or 0)


@dataclass(frozen=True)
class Logged:
    """One delivery as `campaign webhooks log` shows it."""

    event_id: int
    event_type: str
    campaign: str | None
    at: dt.datetime
    endpoint: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None


def logged(conn: Connection, limit: int, campaign: str | None = None) -> tuple[list[Logged], int]:
    """The latest `limit` deliveries, oldest first (with the campaign's only, when named), and how many there are."""
    join = WD.join(E, E.c.id == WD.c.event_id).outerjoin(C, C.c.id == E.c.campaign_id)
    where = [C.c.slug == campaign] if campaign is not None else []
    total = int(conn.execute(select(func.count()).select_from(join).where(*where)).scalar_one())
    rows = conn.execute(select(E.c.id, E.c.type, C.c.slug, E.c.at, WD.c.endpoint, WD.c.state, WD.c.attempts,
                               WD.c.last_status, WD.c.last_error, WD.c.last_attempt_at, WD.c.next_attempt_at,
                               WD.c.delivered_at).select_from(join).where(*where)
                        .order_by(E.c.id.desc(), WD.c.endpoint.desc()).limit(limit)).all()
    return [Logged(*r) for r in reversed(rows)], total


def not_opened(conn: Connection, since: dt.datetime) -> int:
    """Events since `since` that no endpoint has a delivery of (written while no endpoint wanted them)."""
    return int(conn.execute(select(func.count()).select_from(E).where(
        and_(E.c.at >= since, ~exists().where(WD.c.event_id == E.c.id)))).scalar_one())
