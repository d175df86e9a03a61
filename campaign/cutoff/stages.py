"""The staged flip (`[flip] stages`): which stage a run of the flip switches, its guards, and what its end records.

A run switches the devices of every stage begun so far (the accounts whose bucket is below the stage's share:
so a device of stage 1 that waited for fair notice is switched by a later run too). `enter` decides the stage:
the one going on; or, asked for the next (`flip --stage N`, the scheduler's step `flip:N` after `stage_wait`), the
next — once the stage before it has finished and its guards hold. `close`, in the transaction of the run's audit
event, adds the run's requests to the stage, marks it finished when the run went to its end (`flip.stage_finished`;
after the last, `flip.finished`, else the next stage's step `stage_wait` later), and checks its guards at once: a
bad signal halts the flip (`flip.halted`) at the stage that showed it, and nothing more is switched until
`campaign resume` or `rollback`. A stage resumed is not checked again (a person looked); the next one is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from campaign import campaigns, errors
from campaign.cutoff.tally import ApplyTally
from campaign.errors import StateError, UsageError
from campaign.models import LEFT, STAGE_FINISHED, STAGE_HALTED
from campaign.rollout import Rollout, Stage, step_name
from campaign.store import audit, steps
from campaign.store import stages as store

STAGE_FINISHED_EVENT, HALTED_EVENT, FINISHED_EVENT = "flip.stage_finished", "flip.halted", "flip.finished"
GUARD_WORDS = {"conflict_rate": "conflict rate", "error_rate": "error rate", "complaints": "complaints"}


@dataclass(frozen=True)
class Measured:
    """What a stage's guards look at."""

    changes: int  # its devices the flip decided to switch
    conflicts: int  # of them, left: the settings service said their owner had changed the device
    requests: int  # batches sent to the settings service
    errors: int  # of them, no usable answer after every retry, or refused
    complaints: int  # taken in since the stage began

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Guard:
    """A guard that tripped: which, what it measured, its threshold."""

    name: str  # conflict_rate | error_rate | complaints
    measured: float
    threshold: float

    def words(self) -> str:
        return (f"{GUARD_WORDS[self.name]} {self.measured:g} reached halt_on_{self.name} = {self.threshold:g}")


def tripped(r: Rollout, m: Measured) -> Guard | None:
    """The first guard of `r` that `m` reaches (a rate of nothing is 0), or None."""
    checks = (("conflict_rate", r.halt_on_conflict_rate, m.conflicts / m.changes if m.changes else 0.0),
              ("error_rate", r.halt_on_error_rate, m.errors / m.requests if m.requests else 0.0),
              ("complaints", r.halt_on_complaints, float(m.complaints)))
    for name, threshold, value in checks:
        if threshold is not None and value >= threshold:
            return Guard(name, round(value, 4), float(threshold))
    return None


def measure(conn: Connection, campaign_id: int, row: store.StageRow,
            by_stage: dict[int, dict[str, int]] | None = None) -> Measured:
    """What the stage's guards look at; its change rows by state from `by_stage` when given (counted already)."""
    counts = (store.change_counts(conn, campaign_id) if by_stage is None else by_stage).get(row.number, {})
    return Measured(store.decided(counts), counts.get(LEFT, 0), row.requests, row.errors,
                    store.complaints_since(conn, campaign_id, row.started_at))


def halted_words(slug: str, row: store.StageRow) -> str:
    guard = Guard(row.guard or "", row.measured or 0.0, row.threshold or 0.0)
    at = row.halted_at.isoformat() if row.halted_at else "?"
    return (f"the flip of {slug!r} is halted at stage {row.number} ({row.percent}) since {at}: "
            f"{guard.words() if row.guard in GUARD_WORDS else 'a guard tripped'}. Nothing more is switched until "
            f"`campaign resume {slug}` (it goes on) or `campaign rollback {slug}` (it undoes the flip)")


@dataclass(frozen=True)
class Run:
    """One run of a staged flip: the stage it goes up to (every device of stages 1..N whose time has come)."""

    stage: Stage
    of: int  # stages in all


@dataclass(frozen=True)
class Halted:
    """Advancing found the stage before it halted: recorded; the flip refuses once that has committed."""

    message: str


def enter(conn: Connection, c: campaigns.CampaignRow, wanted: int | None, actor: str,
          now: dt.datetime) -> Run | Halted:
    """The stage this run switches: `wanted` (`flip --stage N`), else the one going on (the first at first).
    A new stage begins only after the one before it finished and its guards hold; a guard that trips halts it."""
    r = c.definition.flip
    rows = store.rows(conn, c.id)
    for row in rows:
        if row.state == STAGE_HALTED:
            raise StateError(halted_words(c.slug, row), code=errors.FLIP_HALTED)
    current = rows[-1] if rows else None
    number = wanted or (current.number if current else 1)
    if not 1 <= number <= len(r.stages):
        raise UsageError(f"--stage {number}: the flip of {c.slug!r} has stages 1 to {len(r.stages)} ("
                         f"{', '.join(s.percent for s in r.stages)})")
    begun = current.number if current else 0
    if number > begun:
        if number > begun + 1:
            raise StateError(f"stage {number} of {c.slug!r} cannot begin before stage {begun + 1}: run `campaign "
                             f"flip {c.slug} --stage {begun + 1}` first")
        if current is not None and current.state != STAGE_FINISHED:
            raise StateError(f"stage {current.number} of {c.slug!r} has not finished (a run of it stopped): run "
                             f"`campaign flip {c.slug}` to go on with it first")
        if current is not None and current.resumed_at is None:
            guard = tripped(r, measure(conn, c.id, current))
            if guard is not None:
                record_halt(conn, c.id, current, guard, actor, now)
                return Halted(halted_words(c.slug, store.rows(conn, c.id)[current.number - 1]))
        store.begin(conn, c.id, number, r.stage(number).percent, now)
    return Run(r.stage(number), len(r.stages))


def record_halt(conn: Connection, campaign_id: int, row: store.StageRow, guard: Guard, actor: str,
                now: dt.datetime) -> None:
    if store.halt(conn, campaign_id, row.number, guard.name, guard.measured, guard.threshold, now):
        audit.record(conn, actor, HALTED_EVENT, campaign_id, stage=row.number, percent=row.percent,
                     guard=guard.name, measured=guard.measured, threshold=guard.threshold)


def close(conn: Connection, c: campaigns.CampaignRow, run: Run, tally: ApplyTally | None, actor: str,
          now: dt.datetime) -> dict[str, Any]:
    """The end of a run: its requests counted, the stage finished when the run went to its end, its guards
    checked; returns what the flip's result says of the stage."""
    r, n = c.definition.flip, run.stage.number
    stopped = tally is not None and tally.stopped is not None
    if tally is not None:
        store.count_requests(conn, c.id, n, tally.batches + stopped, int(stopped))
    finished = not stopped and store.finish(conn, c.id, n, now)
    row = store.rows(conn, c.id)[n - 1]
    by_stage = store.change_counts(conn, c.id)  # one pass over the change rows, for the guards and the events
    measured = measure(conn, c.id, row, by_stage)
    if finished:
        audit.record(conn, actor, STAGE_FINISHED_EVENT, c.id, stage=n, percent=run.stage.percent, of=run.of,
                     counts=by_stage.get(n, {}), **measured.as_json())
    guard = None
    if row.resumed_at is None and (stopped or n < run.of) and row.state != STAGE_HALTED:
        guard = tripped(r, measured)
        if guard is not None:
            record_halt(conn, c.id, row, guard, actor, now)
    after: dict[str, Any] | None = None
    if finished and guard is None:
        if n == run.of:
            audit.record(conn, actor, FINISHED_EVENT, c.id, stages=run.of,
                         counts=_totals(by_stage))
        else:
            due = now + r.stage_wait
            steps.register(conn, c.id, [(step_name(n + 1), due)])
            after = {"number": n + 1, "percent": r.stage(n + 1).percent, "due_at": due.isoformat()}
    return {"number": n, "of": run.of, "percent": run.stage.percent,
            "state": STAGE_HALTED if guard else (STAGE_FINISHED if finished else row.state),
            "finished": finished, "measured": measured.as_json(),
            "halted": None if guard is None else {"guard": guard.name, "measured": guard.measured,
                                                  "threshold": guard.threshold, "words": guard.words()},
            "next": after}


def close_unstaged(conn: Connection, c: campaigns.CampaignRow, tally: ApplyTally | None, actor: str,
                   counts: dict[str, int]) -> bool:
    """A flip of one stage (no `[flip] stages`): its first run that went to its end says `flip.finished` (once:
    later runs flip the devices whose fair notice ran). True when it said so."""
    if (tally is not None and tally.stopped is not None) or audit.in_order(conn, c.id, [FINISHED_EVENT]):
        return False
    audit.record(conn, actor, FINISHED_EVENT, c.id, stages=1, counts=counts)
    return True


def _totals(by_stage: dict[int, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in by_stage.values():
        for state, k in counts.items():
            out[state] = out.get(state, 0) + k
    return out

