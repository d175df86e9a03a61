"""The set-based flip batch (issue 26): a batch whose range holds none of the campaign's change rows yet — every
batch of a first run — writes its change rows by a plain `INSERT … SELECT` that sends nothing back, counts what
it decided where it wrote it, and switches the devices by the range and the rows just written, not by a list of
ids sent back and forth (about a third of a batch's time, on SQLite and PostgreSQL). What it writes is exactly
what `changes.decide` and `changes.apply` write (tests/test_flip_setbased.py proves it); any other batch goes
their way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, String, bindparam, func, select, update

from campaign.models import CHANGED, DEVICE_SETTING, SETTING_CHANGE, WAITING
from campaign.store.changes import Batch, Plan, decisions, params

S, SC = DEVICE_SETTING, SETTING_CHANGE


def fresh(conn: Connection, campaign_id: int, batch: Batch) -> bool:
    """True when the campaign has no change row yet for any device in the batch's range (every batch of a first
    flip run): then `decide_fresh` and `apply_fresh` may do the batch's work."""
    return conn.execute(select(SC.c.id).where(SC.c.campaign_id == campaign_id, SC.c.device_id >= batch.first,
                                              SC.c.device_id <= batch.last).limit(1)).first() is None


@dataclass(frozen=True)
class Fresh:
    """What `decide_fresh` wrote: how many rows it decided `changed`, and the devices it left waiting."""

    changed: int
    waiting: list[str]
    every: bool  # every row it wrote is `changed`


def decide_fresh(conn: Connection, plan: Plan, batch: Batch, now: dt.datetime) -> Fresh:
    """`changes.decide` for a batch whose range holds no change row of the campaign yet (`fresh`, in the same
    transaction): the same rows, by a plain `INSERT … SELECT` that sends none back. With no row there, none can
    conflict, and every change row in the range afterwards is one this statement wrote; so the rows decided
    `changed` are counted there instead of travelling (the ones waiting are read only when there are some)."""
    values = params(conn, plan, batch, now)
    conn.execute(decisions(conn, plan, batch, CHANGED), values)

    def counting() -> Any:
        return select(SC.c.state, func.count()).where(*_in_range(plan)).group_by(SC.c.state)
    counts = {str(state): int(n) for state, n in conn.execute(plan.statement("counts", counting), values)}
    waiting: list[str] = []
    if counts.get(WAITING):
        waiting = list(conn.execute(select(SC.c.device_id).where(*_in_range(plan), SC.c.state == WAITING),
                                    values).scalars())
    return Fresh(int(counts.get(CHANGED, 0)), waiting, set(counts) <= {CHANGED})


def _in_range(plan: Plan) -> tuple[ColumnElement[bool], ...]:
    """The campaign's change rows in the batch's range (parameters `lo`, `hi`)."""
    return (SC.c.campaign_id == plan.campaign_id, SC.c.device_id >= bindparam("lo", type_=String),
            SC.c.device_id <= bindparam("hi", type_=String))


def apply_fresh(conn: Connection, plan: Plan, batch: Batch, now: dt.datetime, decided: Fresh) -> int:
    """`changes.apply` after `decide_fresh`: switch the devices of the range whose change row is `changed` (all of
    them written by this batch), each pointing at its change row, by the range rather than a list of ids. When
    every row is `changed`, the state is not read: the unique index on (campaign, device) alone answers."""
    def build() -> Any:
        d = plan.definition
        change = (select(SC.c.id).where(SC.c.campaign_id == plan.campaign_id, SC.c.device_id == S.c.device_id)
                  .scalar_subquery())
        rows = select(SC.c.device_id).where(*_in_range(plan))
        if not decided.every:
            rows = rows.where(SC.c.state == CHANGED)
        return (update(S)
                .where(S.c.device_id >= bindparam("lo", type_=String), S.c.device_id <= bindparam("hi", type_=String),
                       S.c.device_id.in_(rows), S.c.key == d.setting, S.c.value == d.from_value)
                .values(value=d.to_value, changed_at=bindparam("now", type_=SC.c.decided_at.type), change_id=change))
    stmt = plan.statement(("apply", decided.every), build)
    return int(conn.execute(stmt, {"lo": batch.first, "hi": batch.last, "now": now}).rowcount or 0)
