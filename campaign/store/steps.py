"""A campaign's scheduled steps (each wave, the flip), claimed exactly once before they run, and the
scheduler's leadership (a lease row; PostgreSQL also takes an advisory lock, see `campaign.cutoff.scheduling`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, exists, func, or_, select, update

from campaign.models import (
    APPLYING,
    CAMPAIGN,
    DELIVERY,
    LEASE,
    SCHEDULED,
    SENDING,
    SETTING_CHANGE,
    STEP,
    UNDOING,
    WAITING,
)
from campaign.models import PENDING as DELIVERY_PENDING
from campaign.store import campaigns, deliveries, stages
from campaign.store._upsert import insert as upsert_insert

ST, C, L, SC = STEP, CAMPAIGN, LEASE, SETTING_CHANGE
PENDING, RUNNING, DONE, FAILED, CANCELLED, EXPIRED = "pending", "running", "done", "failed", "cancelled", "expired"


@dataclass(frozen=True)
class StepRow:
    id: int
    campaign_id: int
    slug: str
    name: str  # wave:<name> | flip
    due_at: dt.datetime
    state: str
    owner: str | None
    error: str | None


_COLS = (ST.c.id, ST.c.campaign_id, C.c.slug, ST.c.name, ST.c.due_at, ST.c.state, ST.c.owner, ST.c.error)
_FROM = ST.join(C, C.c.id == ST.c.campaign_id)


def register(conn: Connection, campaign_id: int, steps: Iterable[tuple[str, dt.datetime]]) -> int:
    """Add the campaign's steps (name, due); an existing step keeps its state and takes the new due time
    only while pending. Returns how many were added."""
    added = 0
    for name, due in steps:
        stmt = upsert_insert(conn, ST).values(campaign_id=campaign_id, name=name, due_at=due, state=PENDING)
        result = conn.execute(stmt.on_conflict_do_update(
            index_elements=[ST.c.campaign_id, ST.c.name], set_={"due_at": stmt.excluded.due_at},
            where=ST.c.state == PENDING))
        added += int(result.rowcount or 0)
    return added


def of_campaign(conn: Connection, campaign_id: int) -> list[StepRow]:
    return [StepRow(*r) for r in conn.execute(select(*_COLS).select_from(_FROM)
                                              .where(ST.c.campaign_id == campaign_id).order_by(ST.c.due_at, ST.c.id))]


def flip_ran(conn: Connection, campaign_id: int) -> bool:
    """Whether the campaign's flip step has run (the scheduler's; a flip by hand shows in its changes)."""
    return conn.execute(select(ST.c.id).where(ST.c.campaign_id == campaign_id, ST.c.name == "flip",
                                              ST.c.state == DONE).limit(1)).first() is not None


def pending(conn: Connection) -> list[StepRow]:
    """Every pending step of every scheduled campaign, soonest first (what the scheduler has to do)."""
    return [StepRow(*r) for r in conn.execute(select(*_COLS).select_from(_FROM)
                                              .where(ST.c.state == PENDING, C.c.state == SCHEDULED)
                                              .order_by(ST.c.due_at, ST.c.id))]


def claim(conn: Connection, step_id: int, owner: str, now: dt.datetime) -> bool:
    """Take a pending step for `owner`; False when someone else has it or it is no longer pending."""
    result = conn.execute(update(ST).where(ST.c.id == step_id, ST.c.state == PENDING)
                          .values(state=RUNNING, owner=owner, started_at=now))
    return result.rowcount == 1


def finish(conn: Connection, step_id: int, owner: str, state: str, now: dt.datetime, error: str | None = None) -> None:
    conn.execute(update(ST).where(ST.c.id == step_id, ST.c.owner == owner, ST.c.state == RUNNING)
                 .values(state=state, finished_at=now, error=(error or None) and error[:1024]))


def hand_back(conn: Connection, owner: str | None = None) -> int:
    """Running steps go back to pending: those of `owner` (a scheduler stopping), or all of them (a new leader
    taking over: the one that ran them is gone; every step may run again safely, it resumes where it stopped)."""
    stmt = update(ST).where(ST.c.state == RUNNING)
    if owner is not None:
        stmt = stmt.where(ST.c.owner == owner)
    return int(conn.execute(stmt.values(state=PENDING, owner=None, started_at=None)).rowcount or 0)


def next_step(conn: Connection, campaign_id: int) -> StepRow | None:
    r = conn.execute(select(*_COLS).select_from(_FROM).where(ST.c.campaign_id == campaign_id,
                                                             ST.c.state.in_((PENDING, RUNNING)))
                     .order_by(ST.c.due_at, ST.c.id).limit(1)).first()
    return StepRow(*r) if r is not None else None


# -- leadership -----------------------------------------------------------------------------------------

def take_lease(conn: Connection, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta,
               force: bool = False) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl, unless someone else holds it unexpired (or
    `force`: the caller knows the other holder is gone)."""
    stmt = upsert_insert(conn, L).values(name=name, holder=holder, expires_at=now + ttl)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[L.c.name], set_={"holder": holder, "expires_at": now + ttl},
        where=None if force else (L.c.holder == holder) | (L.c.expires_at < now)))
    return conn.execute(select(L.c.holder).where(L.c.name == name)).scalar_one() == holder


def drop_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(L.delete().where(L.c.name == name, L.c.holder == holder))


def lease_holder(conn: Connection, name: str, now: dt.datetime) -> str | None:
    return conn.execute(select(L.c.holder).where(L.c.name == name, L.c.expires_at >= now)).scalar()


def try_advisory_lock(conn: Connection, key: int) -> bool:
    """PostgreSQL: take the session-level advisory lock `key` on this connection, without waiting."""
    return bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one())


def advisory_unlock(conn: Connection, key: int) -> None:
    conn.execute(select(func.pg_advisory_unlock(key)))




def done_wave_steps(conn: Connection) -> list[StepRow]:
    """The wave steps that have started (done) in scheduled campaigns: their waves may have work again."""
    return [StepRow(*r) for r in conn.execute(select(*_COLS).select_from(_FROM).where(
        ST.c.state == DONE, ST.c.name.like("wave:%"), C.c.state == SCHEDULED).order_by(ST.c.due_at, ST.c.id))]


def campaigns_with_due_changes(conn: Connection, now: dt.datetime) -> list[str]:
    """Scheduled campaigns whose flip has run and that have devices waiting for fair notice that has now run."""
    flipped = select(ST.c.campaign_id).where(ST.c.name == "flip", ST.c.state == DONE)
    return list(conn.execute(select(C.c.slug).where(
        C.c.state == SCHEDULED, C.c.id.in_(flipped), C.c.rolled_back_at.is_(None),
        exists().where(SC.c.campaign_id == C.c.id, SC.c.state == WAITING, SC.c.due_at <= now))
        .order_by(C.c.slug)).scalars())


def cancel(conn: Connection, campaign_id: int, name: str, reason: str, now: dt.datetime) -> int:
    """Cancel the campaign's step `name` if it has not run (e.g. the flip, once the campaign is rolled back), and
    its sub-steps `name:…` (a staged flip's later stages); failed ones too (a halted stage's, not tried again)."""
    return int(conn.execute(update(ST).where(ST.c.campaign_id == campaign_id,
                                             or_(ST.c.name == name, ST.c.name.like(f"{name}:%")),
                                             ST.c.state.in_((PENDING, FAILED)))
                            .values(state=CANCELLED, finished_at=now, error=reason)).rowcount or 0)


def reopen(conn: Connection, campaign_id: int, name: str, due: dt.datetime) -> None:
    """The step `name` is pending again, due at `due`, whatever became of it (a staged flip resumed after a
    halt), unless it is running now."""
    stmt = upsert_insert(conn, ST).values(campaign_id=campaign_id, name=name, due_at=due, state=PENDING)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[ST.c.campaign_id, ST.c.name],
        set_={"due_at": due, "state": PENDING, "owner": None, "started_at": None, "finished_at": None,
              "error": None},
        where=ST.c.state != RUNNING))


def alive(conn: Connection) -> bool:
    """Whether this connection's session (and any advisory lock it holds) is still there."""
    try:
        conn.execute(select(1))
        conn.commit()
        return True
    except Exception:
        return False


def started_waves(conn: Connection) -> Iterator[tuple[str, campaigns.WaveRow]]:
    """(campaign, wave) of every wave of a scheduled campaign whose step has run."""
    for step in done_wave_steps(conn):
        wave = campaigns.wave(conn, step.campaign_id, step.name.removeprefix("wave:"))
        if wave is not None:
            yield step.slug, wave


def open_changed_waves(conn: Connection, slug: str, now: dt.datetime) -> list[str]:
    """The `changed` and `all` waves of the campaign whose step has run and that have not expired."""
    return [w.name for s, w in started_waves(conn) if s == slug and w.audience in ("changed", "all")
            and now < w.expires and w.state != campaigns.PAUSED]


def waves_with_work(conn: Connection, now: dt.datetime) -> list[tuple[str, str]]:
    """(campaign, wave) of started waves of scheduled campaigns with deliveries due now."""
    return [(s, w.name) for s, w in started_waves(conn)
            if w.state in (campaigns.SENDING, campaigns.WAITING) and now < w.expires
            and deliveries.outlook(conn, w.id, now, False).due_now]


def finished(conn: Connection) -> list[str]:
    """The scheduled campaigns whose every step has run: none pending, running or failed (to be tried again), no
    delivery waiting or being sent (a paused wave's wait), no device waiting for fair notice or for the settings
    service, no staged flip halted. They are done."""
    D = DELIVERY
    open_step = exists().where(ST.c.campaign_id == C.c.id, ST.c.state.in_((PENDING, RUNNING, FAILED)))
    open_delivery = exists().where(D.c.campaign_id == C.c.id, D.c.state.in_((DELIVERY_PENDING, SENDING)))
    open_change = exists().where(SC.c.campaign_id == C.c.id, SC.c.state.in_((WAITING, APPLYING, UNDOING)))
    any_step = exists().where(ST.c.campaign_id == C.c.id)
    halted = C.c.id.in_(stages.halted_campaigns()) & C.c.rolled_back_at.is_(None)  # a person decides first
    stmt = (select(C.c.slug).where(C.c.state == SCHEDULED, any_step, ~open_step, ~open_delivery, ~open_change,
                                   ~halted).order_by(C.c.slug))
    return list(conn.execute(stmt).scalars())
