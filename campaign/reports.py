"""Reports: a campaign's status (deliveries per wave, the flip), for people and for `--json`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, text

from campaign import campaigns, db, ledger
from campaign.models import CHANGE_STATES

RATE_WINDOW = dt.timedelta(seconds=60)


def status(conn: Connection, slug: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """SPEC §6 `status --json`: per wave every delivery state (zeros included), the flip's counts; plus,
    beside them, each wave's state, pause reason, rate over the last minute and ETA."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    waves: dict[str, dict[str, int]] = {}
    detail: dict[str, dict[str, Any]] = {}
    for w in conn.execute(text("SELECT id, name, state, paused_reason, at, expires FROM wave WHERE campaign_id = :c "
                               "ORDER BY position"), {"c": c.id}).all():
        counts = ledger.counts(conn, w.id)
        waves[w.name] = counts
        recent = conn.execute(ledger.timed_text("SELECT COUNT(*) FROM delivery WHERE wave_id = :w AND state = 'sent' "
                                        "AND sent_at >= :since", "since"),
                              {"w": w.id, "since": now - RATE_WINDOW}).scalar_one()
        rate = recent / RATE_WINDOW.total_seconds()
        left = counts["pending"] + counts["sending"]
        detail[w.name] = {"state": w.state, "paused_reason": w.paused_reason,
                          "at": db.UTCDateTime().process_result_value(w.at, conn.dialect).isoformat(),  # type: ignore[union-attr]
                          "rate_per_second": round(rate, 2),
                          "eta_seconds": round(left / rate) if rate > 0 and left else None}
    flip = dict.fromkeys(CHANGE_STATES, 0)
    for state, n in conn.execute(text("SELECT state, COUNT(*) FROM setting_change WHERE campaign_id = :c "
                                      "GROUP BY state"), {"c": c.id}).all():
        flip[state] = int(n)
    return {"campaign": slug, "state": c.state, "cutoff": c.cutoff.isoformat(), "waves": waves,
            "flip": flip, "wave_detail": detail}
