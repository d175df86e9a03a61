"""The events an approval is decided by (a campaign's definitions, approvals and withdrawals), in the order they
were written. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, select

from campaign.models import AUDIT_EVENT
from campaign.store.audit import Event

A = AUDIT_EVENT


def events(conn: Connection, campaign_id: int, actions: Sequence[str]) -> Iterator[Event]:
    """The campaign's events of these actions, in the order they were recorded: by id, not by time — clocks
    differ between machines (and a simulated one restarts with each process), the order of the writes does not."""
    stmt = (select(A.c.at, A.c.actor, A.c.action, A.c.campaign_id, A.c.detail)
            .where(A.c.campaign_id == campaign_id, A.c.action.in_(list(actions))).order_by(A.c.id))
    for r in conn.execute(stmt):
        yield Event(r.at, r.actor, r.action, r.campaign_id, json.loads(r.detail))


def signed(conn: Connection, campaign_id: int, actions: Sequence[str]) -> set[str]:
    """The statements already signed in the campaign's events of these actions: a signature counts once."""
    return {str(e.detail["signed"]) for e in events(conn, campaign_id, actions) if e.detail.get("signed")}
