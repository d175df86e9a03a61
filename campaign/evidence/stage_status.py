"""A staged flip's stages as `status`, the console and the HTML report show them: each stage with its share, where
it stands (not begun, running, finished, halted), what its guards measure, and why the flip is halted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from campaign import campaigns
from campaign.cutoff import stages
from campaign.evidence.words import iso
from campaign.models import STAGE_HALTED
from campaign.results import Fields
from campaign.store import stages as store

NOT_BEGUN = "not begun"


@dataclass(frozen=True)
class StageStatus(Fields):
    number: int
    percent: str
    state: str  # not begun | running | finished | halted
    started_at: str | None
    finished_at: str | None
    counts: dict[str, int]  # its change rows by state
    measured: dict[str, int] | None  # what its guards look at (stages.Measured), once begun
    resumed_by: str | None


@dataclass(frozen=True)
class HaltStatus(Fields):
    """Why the flip is halted: at which stage, by which guard, what it measured against its threshold."""

    stage: int
    percent: str
    guard: str
    measured: float
    threshold: float
    at: str | None
    words: str


def of(conn: Connection, c: campaigns.CampaignRow, counts: dict[int, dict[str, int]] | None = None
       ) -> tuple[tuple[StageStatus, ...], HaltStatus | None]:
    """Every stage of the definition, begun or not, and the halt (None when the flip goes on); the change rows by
    stage and state as `counts` says (status' count), else counted now."""
    rows = {r.number: r for r in store.rows(conn, c.id)}
    if counts is None:
        counts = store.change_counts(conn, c.id)
    out, halted = [], None
    for s in c.definition.flip.stages:
        r = rows.get(s.number)
        if r is None:
            out.append(StageStatus(s.number, s.percent, NOT_BEGUN, None, None, {}, None, None))
            continue
        out.append(StageStatus(s.number, s.percent, r.state, iso(r.started_at), iso(r.finished_at),
                               counts.get(s.number, {}), stages.measure(conn, c.id, r, counts).as_json(),
                               r.resumed_by))
        if r.state == STAGE_HALTED and r.guard is not None:
            guard = stages.Guard(r.guard, r.measured or 0.0, r.threshold or 0.0)
            halted = HaltStatus(r.number, r.percent, r.guard, guard.measured, guard.threshold, iso(r.halted_at),
                                guard.words())
    return tuple(out), halted


def line(s: StageStatus) -> str:
    """A stage in a few words: `1%: finished, 3 switched, 1 conflict`."""
    if s.measured is None:
        return f"{s.percent}: {s.state}"
    m: dict[str, Any] = s.measured
    return (f"{s.percent}: {s.state}, {s.counts.get('changed', 0)} switched, {m['conflicts']} conflict(s), "
            f"{m['errors']}/{m['requests']} request(s) failed, {m['complaints']} complaint(s)")
