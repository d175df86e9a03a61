"""Audit events: who did what, when, to which campaign. Written in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from campaign.db import utcnow
from campaign.models import AUDIT_EVENT

A = AUDIT_EVENT


def record(conn: Connection, actor: str, action: str, campaign_id: int | None = None, **detail: Any) -> None:
    conn.execute(insert(A).values(
        at=utcnow(), actor=actor, campaign_id=campaign_id, action=action,
        detail=json.dumps(detail, sort_keys=True, default=str, ensure_ascii=False)))


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    actor: str
    action: str
    campaign_id: int | None
    detail: dict[str, Any]


def events(conn: Connection, campaign_id: int | None = None, since: dt.datetime | None = None,
           actor: str | None = None) -> Iterator[Event]:
    """Audit events, oldest first; filtered by campaign, time and actor when given."""
    stmt = select(A.c.at, A.c.actor, A.c.action, A.c.campaign_id, A.c.detail).order_by(A.c.at, A.c.id)
    if campaign_id is not None:
        stmt = stmt.where(A.c.campaign_id == campaign_id)
    if since is not None:
        stmt = stmt.where(A.c.at >= since)
    if actor is not None:
        stmt = stmt.where(A.c.actor == actor)
    for r in conn.execute(stmt):
        yield Event(r.at, r.actor, r.action, r.campaign_id, json.loads(r.detail))
