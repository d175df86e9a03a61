"""What the console's pages show, each read in one transaction from the same calls as the command line: every
campaign with what needs attention (`GET /`), and one campaign's status, steps and audit log
(`GET /campaigns/{slug}`). No rule of its own: status, the listing, the approval and the preflight decide."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from campaign import campaigns, db, migrate, preflight
from campaign.cutoff import approval, scheduling
from campaign.errors import CampaignError, NotFound, UsageError
from campaign.evidence import auditlog, sentences, status, story
from campaign.models import CANCELLED, DONE
from campaign.store import audit, gauges, steps
from campaign.store import campaigns as campaign_store

LOG_SHOWN = 200  # the latest audit events a campaign's page shows (`campaign log` has them all)


@dataclass(frozen=True)
class Line:
    """A campaign on the front page: `campaign list`'s line, and what needs a person's attention."""

    listed: campaigns.Listed
    attention: tuple[str, ...]
    approval_waiting: bool
    counted_at: dt.datetime | None = None  # when its progress was counted; None: not counted yet (zeros shown)

    def as_json(self) -> dict[str, Any]:
        return {**self.listed.as_json(), "attention": list(self.attention),
                "approval_waiting": self.approval_waiting}


def slugs(engine: Engine) -> list[str]:
    with db.read(engine) as conn:
        return campaign_store.slugs(conn)


def overview(engine: Engine, counts: Mapping[str, status.Counted | None] | None = None) -> list[Line]:
    """Every campaign (`campaign list`), each with what needs attention: a paused wave or campaign, the
    scheduler's preflight failing, an approval the definition requires and has not been given. With `counts`
    (the console's last counts, by slug), the progress comes from them instead of a scan of every ledger."""
    with db.read(engine) as conn:
        out = []
        progress = None if counts is None else {
            k.campaign_id: k.progress() for k in counts.values() if k is not None}
        for listed in campaigns.list_campaigns(conn, progress):
            c = campaigns.get(conn, listed.campaign)
            notes: list[str] = []
            if c.state not in (DONE, CANCELLED):
                if c.state_reason:
                    notes.append(f"{c.state}: {c.state_reason}")
                for w in campaign_store.waves(conn, c.id):
                    if w.state == "paused":
                        notes.append(f"wave {w.name} paused: {w.paused_reason or 'by a person'}")
                word = status.preflight_word(conn, c.id)
                if word is not None:
                    notes += [f"preflight [{e.get('code')}]: {e.get('message')}" for e in word.errors]
            standing = approval.standing(conn, c)
            waiting = c.state not in (DONE, CANCELLED) and not standing.allowed
            if waiting:
                notes.append(f"approval {standing.words()}")
            counted = None if counts is None else counts.get(listed.campaign)
            out.append(Line(listed, tuple(notes), waiting, counted.at if counted is not None else None))
        return out


@dataclass(frozen=True)
class Step(status.NextStep):
    """A step of the campaign, as `status` names its next one, with why it failed."""

    error: str | None = None


@dataclass(frozen=True)
class Page:
    """One campaign as its page shows it: `status --json`'s result, the definition's moments, the steps, the
    latest audit events (newest last), and the preflight's last word."""

    status: status.Status
    name: str
    setting: str
    from_value: str
    to_value: str
    min_notice_seconds: float | None
    created_by: str
    waves: tuple[dict[str, Any], ...]
    steps: tuple[Step, ...]
    events: tuple[auditlog.Entry, ...]
    said: tuple[sentences.Said, ...]  # each of `events` in words, as the report tells its timeline
    events_total: int
    last_preflight: str | None


def page(engine: Engine, slug: str, now: dt.datetime | None = None, counted: status.Counted | None = None,
         counting: bool = False) -> Page:
    """`GET /campaigns/{slug}`; its counts as `counted` says (the console's last count), else counted now — or,
    `counting`, none yet (zeros: the page says its first count is under way)."""
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        if counting:
            counted = status.Counted.zero(c.id, db.utcnow())
        st = status.status(conn, slug, now, counted)
        d = c.definition
        events = [auditlog.entry(e, slug) for e in audit.events(conn, c.id)]
        shown = events[-LOG_SHOWN:]
        setting = sentences.Setting(d.setting, d.from_value, d.to_value)
        last = preflight.last_word(conn, c.id)
        return Page(
            status=st, name=c.name, setting=d.setting, from_value=d.from_value, to_value=d.to_value,
            min_notice_seconds=d.min_notice.total_seconds() if d.min_notice else None, created_by=c.created_by,
            waves=tuple({"name": w.name, "at": w.at, "expires": w.expires, "audience": w.audience}
                        for w in d.waves),
            steps=tuple(Step(s.name, s.due_at.isoformat(), s.state, s.error) for s in steps.of_campaign(conn, c.id)),
            events=tuple(shown), said=tuple(sentences.say(e.action, e.actor, e.detail, setting) for e in shown),
            events_total=len(events),
            last_preflight=None if last is None else f"{last.action} at {last.at.isoformat()}")


def status_with(engine: Engine, slug: str, counted: status.Counted | None) -> status.Status:
    """`GET /api/campaigns/{slug}`: `status --json`, its counts as `counted` says (else counted now)."""
    with db.read(engine) as conn:
        return status.status(conn, slug, None, counted)


@dataclass(frozen=True)
class Found:
    """`GET /people?q=`: the person's story in each campaign that concerns them (a message or a device)."""

    query: str
    stories: tuple[story.Story, ...]
    known: bool  # an account matched, in at least one campaign's reading
    problem: str | None = None  # the question could not be asked (an address that is not one, several accounts)


def people(engine: Engine, q: str) -> Found:
    """One person's whole story (`campaign report SLUG --email ADDR | --account ID`) in every campaign: an
    address when `q` holds an @, else an account id."""
    by = {"email": q} if "@" in q else {"account_id": q}
    stories, known = [], False
    with db.read(engine) as conn:
        for slug in campaign_store.slugs(conn):
            try:
                s = story.story(conn, slug, **by)
            except NotFound:
                continue
            except UsageError as exc:
                return Found(q, (), False, str(exc))
            known = True
            if s.messages or s.devices:
                stories.append(s)
    return Found(q, tuple(stories), known)


def healthy(engine: Engine) -> bool:
    """The database answers and its schema is the one this code needs (`GET /healthz`)."""
    try:
        migrate.require_current(engine)
    except (CampaignError, SQLAlchemyError):
        return False
    return True


def gauges_of(engine: Engine) -> gauges.Gauges:
    """What `/metrics` reports, read at scrape time in one transaction: the counts as last counted."""
    with db.read(engine) as conn:
        kept = [gauges.Kept(k.campaign_id, k.at, {w: c.counts for w, c in k.waves.items()}, k.changes)
                for k in status.every_kept(conn)]
        return gauges.read(conn, scheduling.LEADER, kept)
