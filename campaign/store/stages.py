"""The staged flip (`[flip] stages`): an account's bucket and stage in SQL, the `flip_stage` rows (begun, finished,
halted, resumed), and what its guards measure — the stage's changes by state, its requests and errors, the
complaints taken in since it began."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, case, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import BIT

from campaign.models import (
    BOUNCE,
    FLIP_STAGE,
    HELD_BACK,
    SETTING_CHANGE,
    STAGE_FINISHED,
    STAGE_HALTED,
    STAGE_RUNNING,
    WAITING,
)
from campaign.rollout import BUCKETS, Rollout
from campaign.store._upsert import insert as upsert_insert

FS, SC, B = FLIP_STAGE, SETTING_CHANGE, BOUNCE
SQLITE_BUCKET = "campaign_bucket"  # `rollout.bucket`, registered on every SQLite connection (campaign.db)
# A complaint matched to one of the campaign's deliveries (`campaign.returns.bounces`' kind and outcomes).
COMPLAINT, MATCHED = "complaint", ("applied", "recorded", "unsigned")


def bucket(conn: Connection, slug: str, account_id: Any) -> ColumnElement[int]:
    """`rollout.bucket(slug, account_id)` in SQL: sha256 of `slug:account_id`, its first four bytes as an unsigned
    number, modulo BUCKETS. PostgreSQL computes it itself; SQLite calls the Python function."""
    key = literal(f"{slug}:") + account_id
    if conn.dialect.name != "postgresql":
        return getattr(func, SQLITE_BUCKET)(literal(slug), account_id)
    hexa = func.left(func.encode(func.sha256(func.convert_to(key, literal("UTF8"))), literal("hex")), 8)
    return cast(cast(literal("x") + hexa, BIT(32)), BigInteger) % BUCKETS


def stage_of(conn: Connection, slug: str, rollout: Rollout, account_id: Any) -> ColumnElement[int]:
    """The stage of the account `account_id` (the first whose share covers its bucket)."""
    b = bucket(conn, slug, account_id)
    return case(*((b < s.upto, s.number) for s in rollout.stages[:-1]), else_=rollout.stages[-1].number)


@dataclass(frozen=True)
class StageRow:
    number: int
    percent: str
    state: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    requests: int
    errors: int
    halted_at: dt.datetime | None
    halted_from: str | None
    guard: str | None
    measured: float | None
    threshold: float | None
    resumed_at: dt.datetime | None
    resumed_by: str | None


_COLS = (FS.c.number, FS.c.percent, FS.c.state, FS.c.started_at, FS.c.finished_at, FS.c.requests, FS.c.errors,
         FS.c.halted_at, FS.c.halted_from, FS.c.guard, FS.c.measured, FS.c.threshold, FS.c.resumed_at,
         FS.c.resumed_by)


def rows(conn: Connection, campaign_id: int) -> list[StageRow]:
    """The campaign's stages that have begun, first first."""
    return [StageRow(**r._mapping) for r in conn.execute(select(*_COLS).where(FS.c.campaign_id == campaign_id)
                                               .order_by(FS.c.number))]


def begin(conn: Connection, campaign_id: int, number: int, percent: str, now: dt.datetime) -> None:
    """The stage begins now (once: a stage begun stays as it is)."""
    stmt = upsert_insert(conn, FS).values(campaign_id=campaign_id, number=number, percent=percent,
                                          state=STAGE_RUNNING, started_at=now, requests=0, errors=0)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=[FS.c.campaign_id, FS.c.number]))


def count_requests(conn: Connection, campaign_id: int, number: int, requests: int, errors: int) -> None:
    """Add a run's requests to the settings service, and those of them that got no usable answer."""
    if requests or errors:
        conn.execute(update(FS).where(FS.c.campaign_id == campaign_id, FS.c.number == number)
                     .values(requests=FS.c.requests + requests, errors=FS.c.errors + errors))


def finish(conn: Connection, campaign_id: int, number: int, now: dt.datetime) -> bool:
    """A run of the stage went to its end: it is finished (True the first time only)."""
    return bool(conn.execute(update(FS).where(FS.c.campaign_id == campaign_id, FS.c.number == number,
                                              FS.c.state == STAGE_RUNNING)
                             .values(state=STAGE_FINISHED, finished_at=now)).rowcount)


def halt(conn: Connection, campaign_id: int, number: int, guard: str, measured: float, threshold: float,
         now: dt.datetime) -> bool:
    """A guard tripped: the stage is halted, remembering where `resume` takes it back to (True if it was not)."""
    return bool(conn.execute(update(FS).where(FS.c.campaign_id == campaign_id, FS.c.number == number,
                                              FS.c.state != STAGE_HALTED)
                             .values(state=STAGE_HALTED, halted_from=FS.c.state, halted_at=now, guard=guard,
                                     measured=measured, threshold=threshold)).rowcount)


def resume(conn: Connection, campaign_id: int, actor: str, now: dt.datetime) -> StageRow | None:
    """`campaign resume`: the halted stage goes back to where it was, resumed by `actor` (its guards are not
    checked again); None when no stage is halted."""
    halted = [r for r in rows(conn, campaign_id) if r.state == STAGE_HALTED]
    if not halted:
        return None
    conn.execute(update(FS).where(FS.c.campaign_id == campaign_id, FS.c.state == STAGE_HALTED)
                 .values(state=FS.c.halted_from, resumed_at=now, resumed_by=actor[:128]))
    return halted[0]


def change_counts(conn: Connection, campaign_id: int) -> dict[int, dict[str, int]]:
    """The campaign's change rows by stage and state (one pass; the states there are, only)."""
    out: dict[int, dict[str, int]] = {}
    for stage, state, n in conn.execute(select(SC.c.stage, SC.c.state, func.count()).where(
            SC.c.campaign_id == campaign_id, SC.c.stage.is_not(None)).group_by(SC.c.stage, SC.c.state)):
        out.setdefault(int(stage), {})[str(state)] = int(n)
    return out


def complaints_since(conn: Connection, campaign_id: int, since: dt.datetime) -> int:
    """Complaints about the campaign's messages taken in (`bounces import`, `fetch`) since `since`."""
    return int(conn.execute(select(func.count()).select_from(B).where(
        B.c.campaign_id == campaign_id, B.c.kind == COMPLAINT, B.c.outcome.in_(MATCHED),
        B.c.imported_at >= since)).scalar_one())


def decided(counts: dict[str, int]) -> int:
    """A stage's changes: its devices the flip decided to switch (not those held back or waiting)."""
    return sum(n for state, n in counts.items() if state not in (HELD_BACK, WAITING))


def halted_campaigns() -> Any:
    """A select of the ids of campaigns whose flip is halted (they are not done)."""
    return select(FS.c.campaign_id).where(FS.c.state == STAGE_HALTED)
