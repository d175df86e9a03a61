"""`campaign schedule`: render every wave for every recipient (G5: a message that does not render is found now,
not by a customer; on every core), freeze the campaign and register its steps (each wave, the flip) for the
scheduler (`campaign.cutoff.scheduling`), which performs them when due."""

from __future__ import annotations

import contextlib
import datetime as dt
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, preflight
from campaign.config import Config
from campaign.cutoff import approval as approvals
from campaign.definition import Definition
from campaign.errors import StateError, UsageError
from campaign.models import CANCELLED, DRAFT, PAUSED, SCHEDULED
from campaign.notices import everyone, kept
from campaign.store import audience, steps
from campaign.store import campaigns as campaign_rows

FLIP = "flip"


def wave_step(name: str) -> str:
    return f"wave:{name}"


@dataclass
class Timeline:
    campaign: str
    cutoff: dt.datetime
    scheduled: bool
    dry_run: bool
    rendered: int
    items: list[dict[str, Any]] = field(default_factory=list)
    approval: approvals.Standing | None = None
    warnings: tuple[preflight.Finding, ...] = ()  # what the preflight warns of (its errors refuse)

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "cutoff": self.cutoff.isoformat(), "scheduled": self.scheduled,
                "dry_run": self.dry_run, "rendered": self.rendered, "timeline": self.items,
                "approval": self.approval.as_json() if self.approval is not None else None,
                "warnings": [w.as_json() for w in self.warnings]}


Progress = Callable[[int, int], None]  # (messages rendered, messages in all)


def schedule(engine: Engine, config: Config, slug: str, dry_run: bool = False, jobs: int | None = None,
             progress: Progress | None = None, progress_every: float = 0.5) -> Timeline:
    """`campaign schedule`: render every recipient's messages (refusing on any failure) in `jobs` processes (None:
    one per CPU), freeze the campaign and register its steps; under `dry_run`, the timeline only."""
    now = db.utcnow()
    # The render processes start before the transaction: none may inherit an open connection.
    with everyone.Pool(engine, config.database_url, jobs) as pool, \
            db.transaction(engine, config.actor, "campaign.schedule", dry_run=dry_run) as tx:
        conn = tx.conn
        c = campaigns.get(conn, slug)
        tx.campaign_id = c.id
        d = c.definition
        if c.state in (SCHEDULED, PAUSED) and c.scheduled_at is not None:
            raise StateError(f"campaign {slug!r} is scheduled already (since {c.scheduled_at.isoformat()})")
        if c.state == CANCELLED:
            raise StateError(f"campaign {slug!r} is cancelled")
        if c.state != DRAFT:
            raise StateError(f"campaign {slug!r} is {c.state}: only a draft can be scheduled")
        approval = approvals.require(conn, c, "schedule", dry_run=dry_run)
        if d.cutoff <= now:
            raise UsageError(f"the cutoff {d.cutoff.isoformat()} has passed: a campaign is scheduled before its "
                             "cutoff (to replay one whose date has passed, see `campaign demo`)")
        kept_set = kept.sending(conn, c.id, d, config.templates)  # the version's kept words, not the folder's
        renderer = kept_set.renderer(d, config.templates)
        found = preflight.refuse_on_errors(preflight.run(conn, d, renderer, preflight.SCHEDULE))
        summary = audience.summary(conn, d)
        words = everyone.Words(d, kept_set, config.templates)
        outcome = pool.render(conn, words, summary.accounts, progress, progress_every)
        outcome.refuse()  # G5: every wave for every recipient, or nothing is scheduled
        rendered = outcome.rendered
        items = _timeline(conn, d, summary)
        if not dry_run:
            campaign_rows.update_campaign(conn, c.id, state=SCHEDULED, scheduled_at=now)
            steps.register(conn, c.id, [(wave_step(w.name), w.at) for w in d.waves] + [(FLIP, d.cutoff)])
        tx.note(cutoff=d.cutoff.isoformat(), rendered=rendered, render_jobs=outcome.jobs,
                steps=[f"{i['step']} at {i['at']}" for i in items],
                **({"version": kept_set.version} if kept_set.kept else {"templates": "folder"}),
                version_sha256=kept_set.sha256)
        if approval.required:
            tx.note(approved_by=[a.by for a in approval.approvals], version=approval.version,
                    digest=approval.digest)
    return Timeline(slug, d.cutoff, not dry_run, dry_run, rendered, items, approval, found.warnings)


def _timeline(conn: Connection, d: Definition, summary: audience.Summary) -> list[dict[str, Any]]:
    zone = _cutoff_zone(d)

    def when(t: dt.datetime) -> dict[str, str]:
        return {"at": t.astimezone(dt.UTC).isoformat(), "at_cutoff_offset": t.astimezone(zone).isoformat()}

    items: list[dict[str, Any]] = []
    for w in d.waves:
        # `changed` waves go to those the flip will switch: at most everyone affected now.
        n = summary.accounts
        items.append({"step": wave_step(w.name), **when(w.at), "audience": w.audience, "recipients_now": n,
                      "estimated_seconds": round(n / d.limits.rate_per_second) if d.limits.rate_per_second else None,
                      "expires": w.expires.astimezone(dt.UTC).isoformat()})
    held = audience.suppressed_devices(conn, d) if d.require_notice else 0
    items.append({"step": FLIP, **when(d.cutoff), "devices_now": summary.devices,
                  "held_back_if_unnotified": held, "require_notice": d.require_notice,
                  "min_notice_seconds": _min_notice_seconds(d)})
    items.sort(key=lambda i: i["at"])
    return items


def _cutoff_zone(d: Definition) -> dt.tzinfo:
    """The offset the definition wrote its cutoff with (the parsed instant is in UTC)."""
    raw = tomllib.loads(d.text).get("cutoff") if d.text else None
    with contextlib.suppress(ValueError, TypeError):
        value = raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(str(raw).strip())
        if value.tzinfo is not None:
            return value.tzinfo
    return dt.UTC


def _min_notice_seconds(d: Definition) -> int | None:
    value = getattr(d, "min_notice", None)
    return int(value.total_seconds()) if value else None
