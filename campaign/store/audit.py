"""Audit events: who did what, when, to which campaign. Written in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, or_, select

from campaign import webhook_events
from campaign.clock import utcnow
from campaign.models import AUDIT_EVENT
from campaign.store import webhooks

A = AUDIT_EVENT


@functools.cache
def _process() -> tuple[str, str]:
    """This process's login name and host name, read once."""
    try:
        login = getpass.getuser()
    except Exception:  # no login name in some containers
        login = "unknown"
    return login[:128], socket.gethostname()[:255]


def record(conn: Connection, actor: str, action: str, campaign_id: int | None = None, **detail: Any) -> None:
    """One audit event; with the process's login and host beside the actor when the login is someone else. An event
    that is also a webhook event (`campaign.webhook_events`) writes its outbox row with it."""
    login, host = _process()
    differs = login != actor
    at = utcnow()
    done = conn.execute(insert(A).values(
        at=at, actor=actor, campaign_id=campaign_id, action=action,
        detail=json.dumps(detail, sort_keys=True, default=str, ensure_ascii=False),
        login=login if differs else None, host=host if differs else None))
    announced = webhook_events.event_for(action, detail)
    if announced is not None:  # in this same transaction: an event rolled back is never announced
        key = done.inserted_primary_key
        assert key is not None
        webhooks.enqueue(conn, int(key[0]), at, campaign_id, actor, *announced)


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    actor: str
    action: str
    campaign_id: int | None
    detail: dict[str, Any]
    login: str | None = None  # the process's login, when it differs from the actor
    host: str | None = None


def events(conn: Connection, campaign_id: int | None = None, since: dt.datetime | None = None,
           actor: str | None = None, *, include_global: bool = False,
           actions: Sequence[str] | None = None) -> Iterator[Event]:
    """Audit events, oldest first; filtered by campaign, time, actor and action when given. `include_global`
    adds, to a campaign's events, those that belong to no campaign (imports, suppressions): they shape every
    campaign's audience."""
    stmt = select(A.c.at, A.c.actor, A.c.action, A.c.campaign_id, A.c.detail, A.c.login, A.c.host) \
        .order_by(A.c.at, A.c.id)
    if campaign_id is not None:
        own = A.c.campaign_id == campaign_id
        stmt = stmt.where(or_(own, A.c.campaign_id.is_(None)) if include_global else own)
    if since is not None:
        stmt = stmt.where(A.c.at >= since)
    if actor is not None:
        stmt = stmt.where(A.c.actor == actor)
    if actions is not None:
        stmt = stmt.where(A.c.action.in_(list(actions)))
    for r in conn.execute(stmt.execution_options(stream_results=True, yield_per=1000)):
        yield Event(r.at, r.actor, r.action, r.campaign_id, json.loads(r.detail), r.login, r.host)


def in_order(conn: Connection, campaign_id: int, actions: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The campaign's events of these actions as (action, detail), in the order they were written (by id: clocks
    differ between processes, a simulated one among them)."""
    rows = conn.execute(select(A.c.action, A.c.detail).where(A.c.campaign_id == campaign_id,
                                                             A.c.action.in_(list(actions))).order_by(A.c.id))
    return [(r[0], json.loads(r[1])) for r in rows]
