"""Campaign and wave rows: register, replace, list with progress, and their states."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, case, delete, func, insert, select, update

from campaign.models import CAMPAIGN, CHANGED, DELIVERY, SENT, SETTING_CHANGE, SETTLED_STATES, STEP, WAVE

C, W, D, SC = CAMPAIGN, WAVE, DELIVERY, SETTING_CHANGE

# Wave states.
WAITING, SENDING, PAUSED, DONE, CANCELLED = "waiting", "sending", "paused", "done", "cancelled"


def row(conn: Connection, slug: str) -> RowMapping | None:
    """The campaign's row, or None."""
    return conn.execute(select(C).where(C.c.slug == slug)).mappings().first()


def slugs(conn: Connection) -> list[str]:
    return list(conn.execute(select(C.c.slug).order_by(C.c.slug)).scalars())


def insert_campaign(conn: Connection, values: Mapping[str, Any]) -> int:
    return int(conn.execute(insert(C).values(**values)).inserted_primary_key[0])  # type: ignore[index]


def update_campaign(conn: Connection, campaign_id: int, **values: Any) -> None:
    conn.execute(update(C).where(C.c.id == campaign_id).values(**values))


def has_changes(conn: Connection, campaign_id: int) -> bool:
    """Whether the campaign has switched (or tried to switch) any device: its flip has begun."""
    return conn.execute(select(SC.c.id).where(SC.c.campaign_id == campaign_id).limit(1)).first() is not None


def replace_waves(conn: Connection, campaign_id: int, waves: Iterable[Mapping[str, Any]]) -> list[str]:
    """Set a draft's waves to `waves`: a wave of the same name keeps its row (and its ledger), takes the new time,
    audience and expiry; a new one is added; one no longer defined is dropped, unless it has deliveries — those
    are returned, and nothing is dropped then. Steps not yet run are dropped (`schedule` registers them)."""
    conn.execute(delete(STEP).where(STEP.c.campaign_id == campaign_id, STEP.c.state != "done"))
    existing = {r.name: r.id for r in conn.execute(select(W.c.name, W.c.id).where(W.c.campaign_id == campaign_id))}
    wanted = {w["name"] for w in waves}
    gone = [name for name in existing if name not in wanted]
    kept = [name for name in gone if conn.execute(select(D.c.id).where(D.c.wave_id == existing[name]).limit(1))
            .first() is not None]
    if kept:
        return kept
    for name in gone:
        conn.execute(delete(STEP).where(STEP.c.campaign_id == campaign_id, STEP.c.name == f"wave:{name}"))
        conn.execute(delete(W).where(W.c.id == existing[name]))
    for w in waves:
        if w["name"] in existing:
            conn.execute(update(W).where(W.c.id == existing[w["name"]]).values(**w))
        else:
            conn.execute(insert(W).values(campaign_id=campaign_id, state=WAITING, **w))
    return []


def unschedule(conn: Connection, campaign_id: int) -> int:
    """A scheduled campaign back to draft: its steps not yet run are dropped (those done stay, so a wave sent
    is not sent again). Returns how many were dropped."""
    dropped = conn.execute(delete(STEP).where(STEP.c.campaign_id == campaign_id, STEP.c.state != "done")).rowcount
    conn.execute(update(C).where(C.c.id == campaign_id).values(state="draft", scheduled_at=None, state_reason=None))
    return int(dropped or 0)


@dataclass(frozen=True)
class Progress:
    deliveries: int
    settled: int
    sent: int
    devices_changed: int


NO_PROGRESS = Progress(0, 0, 0, 0)


def progress(conn: Connection) -> dict[int, Progress]:
    """Per campaign id: its deliveries (all, settled, sent) and the devices it changed."""
    settled = func.sum(case((D.c.state.in_(SETTLED_STATES), 1), else_=0))
    sent = func.sum(case((D.c.state == SENT, 1), else_=0))
    out: dict[int, Progress] = {}
    for r in conn.execute(select(D.c.campaign_id, func.count(), settled, sent).group_by(D.c.campaign_id)):
        out[r[0]] = Progress(int(r[1]), int(r[2] or 0), int(r[3] or 0), 0)
    for r in conn.execute(select(SC.c.campaign_id, func.count()).where(SC.c.state == CHANGED)
                          .group_by(SC.c.campaign_id)):
        out[r[0]] = dataclasses.replace(out.get(r[0], NO_PROGRESS), devices_changed=int(r[1]))
    return out


def all_rows(conn: Connection) -> list[RowMapping]:
    return list(conn.execute(select(C).order_by(C.c.cutoff, C.c.slug)).mappings())


def cancel_steps(conn: Connection, campaign_id: int) -> int:
    """Cancel the campaign's scheduled steps that have not started (the scheduled flip among them)."""
    return int(conn.execute(update(STEP).where(STEP.c.campaign_id == campaign_id, STEP.c.state == "pending")
                            .values(state="cancelled")).rowcount or 0)


# -- waves ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WaveRow:
    id: int
    name: str
    state: str
    paused_reason: str | None
    at: dt.datetime
    expires: dt.datetime
    audience: str
    finished_at: dt.datetime | None = None  # when it last ended (done), if it did


_WAVE_COLS = (W.c.id, W.c.name, W.c.state, W.c.paused_reason, W.c.at, W.c.expires, W.c.audience, W.c.finished_at)


def wave(conn: Connection, campaign_id: int, name: str) -> WaveRow | None:
    r = conn.execute(select(*_WAVE_COLS).where(W.c.campaign_id == campaign_id, W.c.name == name)).first()
    return WaveRow(*r) if r is not None else None


def waves(conn: Connection, campaign_id: int) -> list[WaveRow]:
    return [WaveRow(*r) for r in conn.execute(select(*_WAVE_COLS).where(W.c.campaign_id == campaign_id)
                                              .order_by(W.c.position))]


def wave_sending(conn: Connection, wave_id: int, now: dt.datetime) -> None:
    conn.execute(update(W).where(W.c.id == wave_id).values(
        state=SENDING, materialized_at=func.coalesce(W.c.materialized_at, now)))


def wave_done(conn: Connection, wave_id: int, now: dt.datetime) -> None:
    conn.execute(update(W).where(W.c.id == wave_id).values(state=DONE, finished_at=now))


def pause_wave(conn: Connection, wave_id: int, reason: str) -> None:
    conn.execute(update(W).where(W.c.id == wave_id).values(state=PAUSED, paused_reason=reason[:1024]))


def resume_waves(conn: Connection, campaign_id: int) -> int:
    """Paused waves of the campaign go back to waiting; returns how many."""
    return int(conn.execute(update(W).where(W.c.campaign_id == campaign_id, W.c.state == PAUSED)
                            .values(state=WAITING, paused_reason=None)).rowcount or 0)


def stopped(conn: Connection, wave_id: int) -> tuple[str, str | None, str, str | None]:
    """(campaign state, its reason, wave state, its pause reason): what a sender checks before each claim."""
    r = conn.execute(select(C.c.state, C.c.state_reason, W.c.state, W.c.paused_reason)
                     .select_from(W.join(C, C.c.id == W.c.campaign_id)).where(W.c.id == wave_id)).one()
    return r[0], r[1], r[2], r[3]
