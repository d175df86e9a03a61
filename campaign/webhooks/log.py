"""`campaign webhooks log`: the deliveries of the webhook outbox — event, endpoint, attempts, state, last answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from campaign import db
from campaign.store import webhooks as store


@dataclass(frozen=True)
class Log:
    """The latest deliveries (oldest of them first), how many there are in all, and the endpoints configured."""

    deliveries: list[store.Logged]
    total: int
    endpoints: list[str]

    def as_json(self) -> dict[str, Any]:
        def iso(t: Any) -> str | None:
            return t.isoformat() if t is not None else None
        return {"total": self.total, "endpoints": self.endpoints, "deliveries": [
            {"event_id": d.event_id, "event": d.event_type, "campaign": d.campaign, "at": iso(d.at),
             "endpoint": d.endpoint, "state": d.state, "attempts": d.attempts, "last_status": d.last_status,
             "last_error": d.last_error, "last_attempt_at": iso(d.last_attempt_at),
             "next_attempt_at": iso(d.next_attempt_at), "delivered_at": iso(d.delivered_at)}
            for d in self.deliveries]}


def log_of(engine: Engine, endpoints: list[str], limit: int = 50, campaign: str | None = None) -> Log:
    with db.read(engine) as conn:
        rows, total = store.logged(conn, limit, campaign)
    return Log(rows, total, endpoints)
