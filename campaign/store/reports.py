"""What the reports read: rates, the flip's counts."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, func, select

from campaign.models import CHANGE_STATES, DELIVERY, SENT, SETTING_CHANGE

D, SC = DELIVERY, SETTING_CHANGE


def sent_since(conn: Connection, wave_id: int, since: dt.datetime) -> int:
    """Deliveries of the wave sent at or after `since` (for the rate)."""
    return int(conn.execute(select(func.count()).select_from(D).where(
        D.c.wave_id == wave_id, D.c.state == SENT, D.c.sent_at >= since)).scalar_one())


def change_counts(conn: Connection, campaign_id: int) -> dict[str, int]:
    """The campaign's setting changes by state, every state present (zero included)."""
    out = dict.fromkeys(CHANGE_STATES, 0)
    for state, n in conn.execute(select(SC.c.state, func.count()).where(SC.c.campaign_id == campaign_id)
                                 .group_by(SC.c.state)):
        out[state] = int(n)
    return out
