"""The count snapshot of a campaign (`count_snapshot`): its status' figures as last counted, and when."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, select

from campaign.models import COUNT_SNAPSHOT as CS
from campaign.store._upsert import insert


def load(conn: Connection, campaign_id: int) -> tuple[dt.datetime, str] | None:
    """(taken_at, body) of the campaign's last count, or None if it was never counted."""
    row = conn.execute(select(CS.c.taken_at, CS.c.body).where(CS.c.campaign_id == campaign_id)).first()
    return None if row is None else (row.taken_at, row.body)


def every(conn: Connection) -> list[tuple[int, dt.datetime, str]]:
    """(campaign_id, taken_at, body) of every campaign's last count."""
    return [(int(r[0]), r[1], r[2]) for r in conn.execute(select(CS.c.campaign_id, CS.c.taken_at, CS.c.body))]


def save(conn: Connection, campaign_id: int, taken_at: dt.datetime, body: str) -> None:
    """Keep this count, unless one taken later is kept already (two processes counted at once)."""
    stmt = insert(conn, CS).values(campaign_id=campaign_id, taken_at=taken_at, body=body)
    conn.execute(stmt.on_conflict_do_update(index_elements=[CS.c.campaign_id],
                                            set_={"taken_at": stmt.excluded.taken_at, "body": stmt.excluded.body},
                                            where=CS.c.taken_at < stmt.excluded.taken_at))
