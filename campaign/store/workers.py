"""Live sending processes: a heartbeat row each, so that others can count them (the shared rate budget)
and give back the deliveries of one that died. The caller owns each transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select

from campaign.models import WORKER
from campaign.store._upsert import insert as upsert_insert

W = WORKER


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    heartbeat_at: dt.datetime


def beat(conn: Connection, worker_id: str, host: str, pid: int, campaign_id: int, wave_id: int,
         now: dt.datetime) -> None:
    """Say this worker is alive now (its row is created on the first beat)."""
    # ON CONFLICT DO UPDATE: each dialect's own insert() says it (same SQL on both).
    stmt = upsert_insert(conn, W).values(id=worker_id, host=host, pid=pid, campaign_id=campaign_id, wave_id=wave_id,
                                    started_at=now, heartbeat_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=[W.c.id], set_={"heartbeat_at": now}))


JOIN_LOCK = 0x6A6F696E  # "join": the advisory lock class of workers joining a campaign's rate, on PostgreSQL


def joining(conn: Connection, campaign_id: int) -> None:
    """Workers joining the campaign's rate one at a time, each seeing the others' rows: on PostgreSQL two joining
    at once would each count only itself (neither sees the other's uncommitted row) and both send at the whole
    rate. The lock is the transaction's. SQLite's writers are one at a time already."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(JOIN_LOCK, campaign_id)))


def of_campaign(conn: Connection, campaign_id: int) -> list[WorkerRow]:
    """The workers that sent for this campaign and have not left, live or not."""
    rows = conn.execute(select(W.c.id, W.c.host, W.c.pid, W.c.heartbeat_at).where(W.c.campaign_id == campaign_id))
    return [WorkerRow(r.id, r.host, r.pid, r.heartbeat_at) for r in rows]


def remove(conn: Connection, worker_ids: Sequence[str]) -> None:
    """Forget workers: this one leaving, or others known dead."""
    if worker_ids:
        conn.execute(delete(W).where(W.c.id.in_(list(worker_ids))))


__all__ = ["JOIN_LOCK", "WorkerRow", "beat", "joining", "of_campaign", "remove"]
