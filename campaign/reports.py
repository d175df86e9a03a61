"""Reports: a campaign's status (deliveries per wave, the flip), for people and for `--json`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db
from campaign.models import WAITING
from campaign.store import campaigns as campaign_store
from campaign.store import changes as change_store
from campaign.store import deliveries, steps
from campaign.store import reports as store

RATE_WINDOW = dt.timedelta(seconds=60)


def status(conn: Connection, slug: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """SPEC §6 `status --json`: per wave every delivery state (zeros included), the flip's counts; plus,
    beside them, each wave's state, pause reason, rate over the last minute and ETA."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    waves: dict[str, dict[str, int]] = {}
    detail: dict[str, dict[str, Any]] = {}
    for w in campaign_store.waves(conn, c.id):
        counts = deliveries.counts(conn, w.id)
        waves[w.name] = counts
        rate = store.sent_since(conn, w.id, now - RATE_WINDOW) / RATE_WINDOW.total_seconds()
        left = counts["pending"] + counts["sending"]
        detail[w.name] = {"state": w.state, "paused_reason": w.paused_reason, "at": w.at.isoformat(),
                          "rate_per_second": round(rate, 2),
                          "eta_seconds": round(left / rate) if rate > 0 and left else None}
    changes = store.change_counts(conn, c.id)
    waiting = changes.pop(WAITING)
    outlook = change_store.outlook(conn, c.id)
    flip_detail = {"waiting": waiting, "next_due": outlook.next_due.isoformat() if outlook.next_due else None,
                   "held_back": changes["held_back"], "held_back_why": outlook.held_back_why,
                   "rolled_back_at": c.rolled_back_at.isoformat() if c.rolled_back_at else None}
    return {"campaign": slug, "state": c.state, "cutoff": c.cutoff.isoformat(), "waves": waves,
            "flip": changes, "wave_detail": detail, "flip_detail": flip_detail,
            "next_step": _next_step(conn, c.id)}


def _next_step(conn: Connection, campaign_id: int) -> dict[str, Any] | None:
    s = steps.next_step(conn, campaign_id)
    return None if s is None else {"step": s.name, "due_at": s.due_at.isoformat(), "state": s.state}


def status_of(engine: Engine, slug: str) -> dict[str, Any]:
    """`campaign status`."""
    with db.read(engine) as conn:
        return status(conn, slug)
