"""The aggregates `/metrics` reports at scrape time: deliveries by campaign, wave and state; setting changes by
campaign and state; the scheduler's lease; the last step it finished. Group-bys over indexed columns only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from campaign.models import CAMPAIGN, DELIVERY, LEASE, SETTING_CHANGE, STEP, WAVE

C, W, D, SC, L, ST = CAMPAIGN, WAVE, DELIVERY, SETTING_CHANGE, LEASE, STEP


@dataclass(frozen=True)
class Gauges:
    deliveries: list[tuple[str, str, str, int]]  # campaign, wave, state, count
    changes: list[tuple[str, str, int]]  # campaign, state, count
    lease_expires_at: dt.datetime | None  # the scheduler's lease (renewed every third of it while it leads)
    last_step_at: dt.datetime | None  # the last step the scheduler finished


def read(conn: Connection, lease_name: str) -> Gauges:
    # by wave id first (the claim index leads with wave_id, state), then named: no join over the ledger
    by_wave = conn.execute(select(D.c.wave_id, D.c.state, func.count()).group_by(D.c.wave_id, D.c.state)).all()
    names = {r[0]: (r[1], r[2]) for r in conn.execute(select(W.c.id, C.c.slug, W.c.name)
                                                        .select_from(W.join(C, C.c.id == W.c.campaign_id)))}
    deliveries = [(*names.get(w, ("?", str(w))), s, int(n)) for w, s, n in by_wave]
    slugs = {r[0]: r[1] for r in conn.execute(select(C.c.id, C.c.slug))}
    changes = [(slugs.get(c, str(c)), s, int(n)) for c, s, n in conn.execute(
        select(SC.c.campaign_id, SC.c.state, func.count()).group_by(SC.c.campaign_id, SC.c.state))]
    lease = conn.execute(select(L.c.expires_at).where(L.c.name == lease_name)).scalar()
    last = conn.execute(select(func.max(ST.c.finished_at))).scalar()
    return Gauges(deliveries, changes, lease, last)
