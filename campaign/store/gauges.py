"""What `/metrics` reports at scrape time: deliveries by campaign, wave and state and setting changes by campaign
and state, as last counted (the console's counts, kept in the database: no scan of the ledger at each scrape), when
each campaign was counted; the scheduler's lease; the last step it finished."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from campaign.models import CAMPAIGN, LEASE, STEP, WAVE

C, W, L, ST = CAMPAIGN, WAVE, LEASE, STEP


@dataclass(frozen=True)
class Gauges:
    deliveries: list[tuple[str, str, str, int]]  # campaign, wave, state, count
    changes: list[tuple[str, str, int]]  # campaign, state, count
    counted_at: list[tuple[str, dt.datetime]]  # campaign, when its counts were taken
    lease_expires_at: dt.datetime | None  # the scheduler's lease (renewed every third of it while it leads)
    last_step_at: dt.datetime | None  # the last step the scheduler finished


@dataclass(frozen=True)
class Kept:
    """One campaign's last count, as the gauges need it."""

    campaign_id: int
    at: dt.datetime
    by_wave: Mapping[int, Mapping[str, int]]  # wave id -> delivery state -> count
    changes: Mapping[str, int]  # change state -> count


def read(conn: Connection, lease_name: str, kept: Sequence[Kept]) -> Gauges:
    names = {r[0]: (r[1], r[2]) for r in conn.execute(select(W.c.id, C.c.slug, W.c.name)
                                                        .select_from(W.join(C, C.c.id == W.c.campaign_id)))}
    slugs = {r[0]: r[1] for r in conn.execute(select(C.c.id, C.c.slug))}
    deliveries = [(*names.get(w, (slugs.get(k.campaign_id, "?"), str(w))), s, int(n))
                  for k in kept for w, states in k.by_wave.items() for s, n in states.items()]
    changes = [(slugs.get(k.campaign_id, str(k.campaign_id)), s, int(n)) for k in kept for s, n in k.changes.items()]
    counted_at = [(slugs.get(k.campaign_id, str(k.campaign_id)), k.at) for k in kept]
    lease = conn.execute(select(L.c.expires_at).where(L.c.name == lease_name)).scalar()
    last = conn.execute(select(func.max(ST.c.finished_at))).scalar()
    return Gauges(deliveries, changes, counted_at, lease, last)
