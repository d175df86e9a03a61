"""`campaign status`: where a campaign stands — deliveries per wave with their rate and ETA, the flip's counts,
what waits for the settings service, the next step and the approval — as one typed result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, preflight
from campaign.cutoff import approval
from campaign.definition import NOTICES
from campaign.evidence import stage_status
from campaign.evidence.words import iso
from campaign.models import APPLY_STATES, CHANGE_STATES, CHANGED, DELIVERY_STATES, SENT, SETTLED_STATES, WAITING
from campaign.results import Fields
from campaign.store import campaigns as campaign_store
from campaign.store import changes as change_store
from campaign.store import deliveries, snapshots, steps
from campaign.store import evidence as store
from campaign.store import stages as stage_store

RATE_WINDOW = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class WaveStatus(Fields):
    """A wave beside its counts: its state, why it paused, when it was due, its rate over the last minute and ETA."""

    state: str
    paused_reason: str | None
    at: str
    rate_per_second: float
    eta_seconds: int | None
    waiting_window: int = 0  # pending deliveries waiting for their recipient's send window to open
    waiting_retry: int = 0  # pending deliveries waiting to be tried again


@dataclass(frozen=True)
class ApplyStatus(Fields):
    """[apply] kind = "http": what the settings service applied and what waits for it."""

    kind: str
    url: str | None
    applied: int
    waiting: int
    undoing: int
    unknown_device: int
    batches_waiting: int
    paused: str | None
    last_error: str | None


@dataclass(frozen=True)
class FlipStatus:
    """The flip beside its counts: devices waiting for fair notice and when the first is due, those held back and
    why, when it was rolled back; with [apply] kind = "http", the settings service's side; with [flip] stages,
    each stage and why the flip is halted."""

    waiting: int
    next_due: str | None
    held_back: int
    held_back_why: dict[str, int]
    rolled_back_at: str | None
    apply: ApplyStatus | None = None
    stages: tuple[stage_status.StageStatus, ...] | None = None  # a staged flip only
    halted: stage_status.HaltStatus | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"waiting": self.waiting, "next_due": self.next_due, "held_back": self.held_back,
                               "held_back_why": self.held_back_why, "rolled_back_at": self.rolled_back_at}
        if self.apply is not None:
            out["apply"] = self.apply.as_json()
        if self.stages is not None:
            out["stages"] = [s.as_json() for s in self.stages]
            out["halted"] = None if self.halted is None else self.halted.as_json()
        return out


@dataclass(frozen=True)
class NextStep(Fields):
    step: str
    due_at: str
    state: str


@dataclass(frozen=True)
class Status:
    """SPEC §6 `status --json`: per wave every delivery state (zeros included), the flip's counts; beside them each
    wave's detail, the flip's, the next step and the approval."""

    campaign: str
    state: str
    cutoff: str
    waves: dict[str, dict[str, int]]  # wave -> delivery state -> count
    flip: dict[str, int]  # change state -> count (without the apply states, which have their own detail)
    wave_detail: dict[str, WaveStatus]
    flip_detail: FlipStatus
    next_step: NextStep | None
    approval: approval.Standing
    preflight: PreflightWord | None = None  # what the scheduler's preflight says would fail, while it does
    coverage: store.Coverage | None = None  # who of the affected people was told, and in time

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "state": self.state, "cutoff": self.cutoff, "waves": self.waves,
                "flip": self.flip, "wave_detail": {name: w.as_json() for name, w in self.wave_detail.items()},
                "flip_detail": self.flip_detail.as_json(),
                "next_step": None if self.next_step is None else self.next_step.as_json(),
                "approval": approval_json(self.approval),
                "preflight": None if self.preflight is None else self.preflight.as_json(),
                "notice_coverage": None if self.coverage is None else coverage_json(self.coverage)}


def coverage_json(c: store.Coverage) -> dict[str, Any]:
    """`notice_coverage`: the affected accounts, those told before the cutoff and in time, and why the others
    were not."""
    return {"affected_accounts": c.affected_accounts, "told_before_cutoff": c.told_before_cutoff,
            "told_in_time": c.told_in_time,
            "not_told": {"bounced": c.bounced, "failed": c.failed, "suppressed": c.suppressed,
                         "never_sent": c.never_sent}}


@dataclass(frozen=True)
class PreflightWord:
    """The scheduler's preflight found errors (when it last looked, they were still there): what would fail."""

    at: str
    errors: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "errors": list(self.errors)}


def preflight_word(conn: Connection, campaign_id: int) -> PreflightWord | None:
    last = preflight.last_word(conn, campaign_id)
    if last is None or last.action != preflight.FAILED:
        return None
    return PreflightWord(last.at.isoformat(), tuple(last.detail.get("errors", ())))


def approval_json(s: approval.Standing) -> dict[str, Any]:
    """Who approved the definition, when, for which version and digest (`[approval]`), with a line in words."""
    return {**s.as_json(), "words": s.words()}


@dataclass(frozen=True)
class WaveCount:
    """One wave's figures that scan its ledger: deliveries by state, the rate over the last minute, and the pending
    deliveries waiting for a send window or a retry."""

    counts: dict[str, int]
    rate_per_second: float = 0.0
    waiting_window: int = 0
    waiting_retry: int = 0


@dataclass(frozen=True)
class Counted:
    """The figures of `status` that scan the ledger and the change rows — seconds at a million accounts — as of
    `at`. `status` counts them afresh; the console shows the last count (kept in `count_snapshot`) and counts again
    in the background, beside the rest of the status (state, approval, steps, preflight: a few rows) read at each
    request."""

    campaign_id: int
    at: dt.datetime
    waves: dict[int, WaveCount]  # by wave id
    changes: dict[str, int]  # change state -> count, every state
    next_due: dt.datetime | None
    held_back_why: dict[str, int]
    coverage: store.Coverage
    stage_changes: dict[int, dict[str, int]] = dataclasses.field(default_factory=dict)  # a staged flip's, by stage

    def as_json(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "at": self.at.isoformat(),
                "waves": {str(k): dataclasses.asdict(v) for k, v in self.waves.items()},
                "changes": self.changes, "next_due": iso(self.next_due), "held_back_why": self.held_back_why,
                "coverage": dataclasses.asdict(self.coverage),
                "stage_changes": {str(k): v for k, v in self.stage_changes.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counted:
        return cls(campaign_id=int(data["campaign_id"]), at=dt.datetime.fromisoformat(data["at"]),
                   waves={int(k): WaveCount(**v) for k, v in data["waves"].items()},
                   changes={str(k): int(v) for k, v in data["changes"].items()},
                   next_due=None if data["next_due"] is None else dt.datetime.fromisoformat(data["next_due"]),
                   held_back_why={str(k): int(v) for k, v in data["held_back_why"].items()},
                   coverage=store.Coverage(**data["coverage"]),
                   stage_changes={int(k): {str(s): int(n) for s, n in v.items()}
                                  for k, v in data.get("stage_changes", {}).items()})

    @classmethod
    def zero(cls, campaign_id: int, at: dt.datetime) -> Counted:
        """No count yet (the console's first count of a campaign is under way): every figure zero, said as such."""
        return cls(campaign_id, at, {}, dict.fromkeys(CHANGE_STATES, 0), None, {},
                   store.Coverage(0, 0, 0, 0, 0, 0, 0))

    def progress(self) -> campaign_store.Progress:
        """`campaign list`'s progress: deliveries (all, settled, sent), devices switched."""
        def of(states: Collection[str] | None) -> int:
            return sum(n for w in self.waves.values() for state, n in w.counts.items() if states is None or
                       state in states)

        return campaign_store.Progress(of(None), of(SETTLED_STATES), of((SENT,)), self.changes.get(CHANGED, 0))


def count(conn: Connection, c: campaigns.CampaignRow, now: dt.datetime | None = None) -> Counted:
    """The campaign's figures that scan its ledger and its change rows, counted now."""
    now = now or db.utcnow()
    waves: dict[int, WaveCount] = {}
    told_by = []
    for w in campaign_store.waves(conn, c.id):
        if w.audience in NOTICES:
            told_by.append(w.id)
        counts = deliveries.counts(conn, w.id)
        # A wave done before the window began sent nothing in it (sending again marks it `sending` first): its
        # rate is 0 without counting a million rows.
        idle = w.state == campaign_store.DONE and w.finished_at is not None and w.finished_at < now - RATE_WINDOW
        rate = 0.0 if idle else deliveries.sent_since(conn, w.id, now - RATE_WINDOW) / RATE_WINDOW.total_seconds()
        look = deliveries.outlook(conn, w.id, now, False) if counts["pending"] else None
        waves[w.id] = WaveCount(counts, round(rate, 2), look.waiting_window if look else 0,
                                look.waiting_retry if look else 0)
    outlook = change_store.outlook(conn, c.id)
    return Counted(campaign_id=c.id, at=now, waves=waves, changes={**dict.fromkeys(CHANGE_STATES, 0), **outlook.counts},
                   next_due=outlook.next_due, held_back_why=outlook.held_back_why,
                   coverage=store.notice_coverage(conn, c.id, c.definition, told_by),
                   stage_changes=stage_store.change_counts(conn, c.id) if c.definition.flip.staged else {})


def status(conn: Connection, slug: str, now: dt.datetime | None = None, counted: Counted | None = None) -> Status:
    """The campaign's status now; its counts as `counted` says (an earlier count), else counted now."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    if counted is None:
        counted = count(conn, c, now)
    waves: dict[str, dict[str, int]] = {}
    detail: dict[str, WaveStatus] = {}
    for w in campaign_store.waves(conn, c.id):
        wc = counted.waves.get(w.id) or WaveCount(dict.fromkeys(DELIVERY_STATES, 0))  # a wave newer than the count
        waves[w.name] = dict(wc.counts)
        left = wc.counts["pending"] + wc.counts["sending"]
        rate = wc.rate_per_second
        detail[w.name] = WaveStatus(state=w.state, paused_reason=w.paused_reason, at=w.at.isoformat(),
                                    rate_per_second=rate, eta_seconds=round(left / rate) if rate > 0 and left else None,
                                    waiting_window=wc.waiting_window, waiting_retry=wc.waiting_retry)
    changes = dict(counted.changes)
    waiting = changes.pop(WAITING)
    held_back = changes["held_back"]
    apply = _apply_status(conn, c, changes) if c.definition.apply.http else None
    staged = stage_status.of(conn, c, counted.stage_changes) if c.definition.flip.staged else None
    flip_detail = FlipStatus(waiting=waiting, next_due=iso(counted.next_due), held_back=held_back,
                             held_back_why=dict(counted.held_back_why), rolled_back_at=iso(c.rolled_back_at),
                             apply=apply, stages=staged[0] if staged else None, halted=staged[1] if staged else None)
    return Status(campaign=slug, state=c.state, cutoff=c.cutoff.isoformat(), waves=waves, flip=changes,
                  wave_detail=detail, flip_detail=flip_detail, next_step=_next_step(conn, c.id),
                  approval=approval.standing(conn, c), preflight=preflight_word(conn, c.id),
                  coverage=counted.coverage)


def _apply_status(conn: Connection, c: campaigns.CampaignRow, changes: dict[str, int]) -> ApplyStatus:
    """[apply] kind = "http": what the settings service applied and what waits for it (the apply states leave
    the `flip` counts, which stay those of SPEC §6)."""
    for state in APPLY_STATES:
        changes.pop(state, None)
    a = change_store.apply_state(conn, c.id)
    return ApplyStatus(kind="http", url=c.definition.apply.url, applied=changes[CHANGED], waiting=a.waiting,
                       undoing=a.undoing, unknown_device=a.unknown, batches_waiting=a.batches_waiting,
                       paused=a.paused, last_error=a.last_error)


def _next_step(conn: Connection, campaign_id: int) -> NextStep | None:
    s = steps.next_step(conn, campaign_id)
    return None if s is None else NextStep(step=s.name, due_at=s.due_at.isoformat(), state=s.state)


def kept_count(engine: Engine, slug: str) -> Counted | None:
    """The campaign's last count kept in the database (by any process), or None if it was never kept."""
    with db.read(engine) as conn:
        found = snapshots.load(conn, campaigns.get(conn, slug).id)
    return None if found is None else Counted.from_json(json.loads(found[1]))


def every_kept(conn: Connection) -> list[Counted]:
    """Every campaign's last count kept in the database."""
    return [Counted.from_json(json.loads(body)) for _, _, body in snapshots.every(conn)]


def count_and_keep(engine: Engine, slug: str) -> Counted:
    """Count the campaign's figures now (one read transaction: a consistent snapshot) and keep them, for every
    console process to show."""
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        counted = count(conn, c)
    with db.write(engine) as conn:
        snapshots.save(conn, c.id, counted.at, json.dumps(counted.as_json(), sort_keys=True))
    return counted


def status_of(engine: Engine, slug: str) -> Status:
    """`campaign status`."""
    with db.read(engine) as conn:
        return status(conn, slug)
