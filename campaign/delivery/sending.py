"""Sending a wave (SPEC §6 `send`, G2–G5, §8): `send_wave` prepares the wave (the ledger rows, their send
windows), runs one worker in-process or N worker processes until every delivery of the wave is settled, reports
progress, and returns a summary.

The parts, each testable alone: triage (`campaign.delivery.triage`: what becomes of a claimed delivery, and of an
SMTP outcome; pure), the composer (`campaign.delivery.compose`: one message → an `Envelope`), the worker
(`campaign.delivery.worker`: claim, compose, send, record, with its feed, recorder and heartbeat), the worker
processes (`campaign.delivery.pool`). The campaign's rate is shared by the live workers (see
`campaign.delivery.heartbeat`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, errors
from campaign.config import Config
from campaign.connection import call
from campaign.cutoff import approval as approvals
from campaign.definition import WaveDef
from campaign.delivery.job import Job, SendOptions, Timings
from campaign.delivery.pool import run_processes
from campaign.delivery.transport import Transport
from campaign.delivery.transport import parse_url as parse_smtp_url
from campaign.delivery.worker import PROGRESS_EVERY, Worker
from campaign.errors import StateError, UsageError
from campaign.models import CANCELLED, PAUSED
from campaign.notices import kept
from campaign.store import audience, audit, deliveries
from campaign.store import campaigns as campaign_rows

__all__ = ["SendOptions", "SendSummary", "Timings", "WaveExpired", "prepare", "send_wave"]


class WaveExpired(StateError):
    """The wave's `expires` has passed: nothing of it goes out any more."""

    code = errors.EXPIRED

    def __init__(self, campaign_id: int, wave_id: int, wave: str, expires: dt.datetime) -> None:
        super().__init__(f"wave {wave!r} expired at {expires.isoformat()}")
        self.campaign_id, self.wave_id, self.wave, self.expires = campaign_id, wave_id, wave, expires


@dataclass
class SendSummary:
    campaign: str
    wave: str
    counts: dict[str, int]
    attempted: int = 0
    elapsed: float = 0.0
    db_seconds: float = 0.0  # the database held the send up (preparing, finishing, the loop idle waiting on it)
    gate_seconds: float = 0.0  # the connections waited at the gate (G2) or for a claim, on average, busy loop or not
    prepare_seconds: float = 0.0  # of db_seconds: preparing the wave (its ledger rows, their windows)
    finish_seconds: float = 0.0  # of db_seconds: finishing it (the counts, the wave done, the audit event)
    waiting_window: int = 0
    paused: str | None = None
    dry_run: bool = False
    preview: dict[str, Any] = field(default_factory=dict)
    ahead_seconds: float = 0.0  # sent this long before the wave's time (a manual send ahead of it), else 0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- preparing a wave ------------------------------------------------------------------------------------

def prepare(conn: Connection, slug: str, wave_name: str, ignore_window: bool,
            now: dt.datetime, dry_run: bool = False,
            out_of_order: bool = False) -> tuple[campaigns.CampaignRow, WaveDef, int, int]:
    """Check the campaign may send this wave now (its approval too, when required; a dry run only says it
    would wait), add the wave's missing ledger rows and their send windows. Returns (campaign, wave, wave id,
    rows added). Raises StateError when it may not."""
    c = campaigns.get(conn, slug)
    d = c.definition
    try:
        wave = d.wave(wave_name)
    except KeyError:
        raise UsageError(f"no wave {wave_name!r} in {slug} (waves: {', '.join(w.name for w in d.waves)})") \
            from None
    row = campaign_rows.wave(conn, c.id, wave_name)
    assert row is not None, f"campaign {slug} has no wave row {wave_name!r}"
    if c.state == CANCELLED:
        raise StateError(f"campaign {slug!r} is cancelled: nothing more is sent", code=errors.CANCELLED)
    if c.state == PAUSED:
        raise StateError(f"campaign {slug!r} is paused ({c.state_reason or 'no reason given'}): "
                         f"`campaign resume {slug}` first", code=errors.PAUSED)
    if row.state == campaign_rows.PAUSED:
        raise StateError(f"wave {wave_name!r} paused itself: {row.paused_reason}. Fix the cause, then "
                         f"`campaign resume {slug}`", code=errors.PAUSED)
    if now >= wave.expires:
        raise WaveExpired(c.id, row.id, wave_name, wave.expires)
    if not out_of_order:
        _in_order(conn, c, wave, now)
    approvals.require(conn, c, "send", dry_run=dry_run)
    added = deliveries.materialize(conn, c.id, row.id, audience.accounts(d, c.id, wave.audience, row.id),
                                   wave.expires, now)
    if not d.send_window.always_open and not ignore_window:
        # (Rows left without a time are checked against the window when claimed: this only spares
        # a sender the claims of people who are asleep.)
        deliveries.plan_windows(conn, row.id, d.send_window, now)
    campaign_rows.wave_sending(conn, row.id, now)
    return c, wave, row.id, added


def _dry_run_preview(conn: Connection, wave_id: int, ignore_window: bool, now: dt.datetime) -> dict[str, Any]:
    look = deliveries.outlook(conn, wave_id, now, ignore_window)
    return {"by_locale": deliveries.pending_by_locale(conn, wave_id), "first": deliveries.first_pending(conn, wave_id),
            "due_now": look.due_now, "waiting_window": look.waiting_window}



# -- the command ----------------------------------------------------------------------------------------

def _in_order(conn: Connection, c: campaigns.CampaignRow, wave: WaveDef, now: dt.datetime) -> None:
    """UsageError when an `affected` wave that comes before `wave` has not gone out yet (a reminder before the
    notice would remind people of something they were never told). One that expired unsent never can go out:
    it does not hold the later waves back (the confirmation after the cutoff, say)."""
    for earlier in c.definition.waves:
        if earlier.name == wave.name or earlier.at > wave.at:
            break
        row = campaign_rows.wave(conn, c.id, earlier.name)
        if (earlier.audience == "affected" and row is not None and row.state == campaign_rows.WAITING
                and earlier.expires > now):
            raise UsageError(f"wave {wave.name!r} comes after the `affected` wave {earlier.name!r}, which has not "
                             f"been sent: send {earlier.name!r} first (it is due {earlier.at.isoformat()}), or "
                             "`send --out-of-order` to send this one anyway")


def send_wave(engine: Engine, config: Config, slug: str, wave_name: str, options: SendOptions,
              progress: Callable[[dict[str, int]], None] | None = None,
              transport: Transport | None = None, progress_every: float = PROGRESS_EVERY) -> SendSummary:
    """Send a wave now and wait until every delivery is settled (but those waiting for their window).
    `progress` gets the wave's counts every `progress_every` seconds (each a count of the wave's deliveries:
    a caller that shows a line every ten seconds asks for them that often), and once at the end."""
    start = time.perf_counter()
    now = db.utcnow()
    if transport is None:
        parse_smtp_url(config.smtp_url)  # a bad URL is refused here, before any row moves, not in a worker
    try:
        with db.transaction(engine, config.actor, "wave.send", dry_run=options.dry_run) as tx:
            c, wave, wave_id, added = prepare(tx.conn, slug, wave_name, options.ignore_window, now,
                                                options.dry_run, options.out_of_order)
            tx.campaign_id = c.id
            ahead = max(0.0, (wave.at - now).total_seconds())
            # What the messages are built from: the version's kept templates (or the folder, none kept).
            templates = kept.sending(tx.conn, c.id, c.definition, config.templates)
            tx.note(wave=wave_name, added=added, ignore_window=options.ignore_window,
                    **({"version": templates.version} if templates.kept else {"templates": "folder"}),
                    version_sha256=templates.sha256,
                    **({"ahead_seconds": round(ahead)} if ahead else {}),
                    **({"out_of_order": True} if options.out_of_order else {}))
            if options.dry_run:
                preview = _dry_run_preview(tx.conn, wave_id, options.ignore_window, now)
                counts = deliveries.counts(tx.conn, wave_id)
    except WaveExpired as exc:
        # Its pending deliveries end `expired` (G3), in a transaction of their own: the refusal must not undo it.
        with db.transaction(engine, config.actor, "wave.expire", campaign_id=exc.campaign_id,
                            dry_run=options.dry_run) as tx:
            n = deliveries.expire(tx.conn, exc.wave_id, now)
            campaign_rows.wave_done(tx.conn, exc.wave_id, now)
            tx.note(wave=wave_name, expired=n)
        verb = "would be marked" if options.dry_run else "marked"
        raise StateError(f"wave {wave_name!r} expired at {exc.expires.isoformat()}: it is never sent after that "
                         f"({n} pending deliveries {verb} expired)", code=errors.EXPIRED) from None
    if options.dry_run:
        return SendSummary(slug, wave_name, counts, dry_run=True, preview=preview, ahead_seconds=ahead)
    db_seconds = prepare_seconds = time.perf_counter() - start
    job = Job(config, c.id, slug, wave_name, wave_id, options, templates)

    if options.workers <= 1:
        worker = Worker(engine, job, transport=transport, progress=progress, progress_every=progress_every)
        worker.run_to_end()
        attempted, gate_seconds = worker.attempted, worker.gate_seconds
        db_seconds += worker.db_seconds
    else:
        attempted, waited, gate_seconds = run_processes(engine, job, progress, progress_every)
        db_seconds += waited
    end = time.perf_counter()
    counts, look, paused = call(engine, _finish, c.id, wave_id, wave_name, config.actor, options.ignore_window,
                                attempted, retry_for=options.timings.reconnect_for)
    finish_seconds = time.perf_counter() - end
    db_seconds += finish_seconds
    if progress is not None:
        progress(counts)
    return SendSummary(slug, wave_name, counts, attempted=attempted, elapsed=time.perf_counter() - start,
                       db_seconds=db_seconds, gate_seconds=gate_seconds, prepare_seconds=prepare_seconds,
                       finish_seconds=finish_seconds, waiting_window=look.waiting_window,
                       paused=paused, ahead_seconds=ahead)


def _finish(conn: Connection, campaign_id: int, wave_id: int, wave_name: str, actor: str, ignore_window: bool,
            attempted: int) -> tuple[dict[str, int], deliveries.Outlook, str | None]:
    """The wave's counts at the end; the wave is done when nothing is left to send (not even later)."""
    now = db.utcnow()
    counts, look = deliveries.tally(conn, wave_id, now, ignore_window)
    row = campaign_rows.wave(conn, campaign_id, wave_name)
    assert row is not None
    paused = row.paused_reason if row.state == campaign_rows.PAUSED else None
    done = not paused and not look.waiting_window and not counts["pending"] and not counts["sending"]
    if done:
        campaign_rows.wave_done(conn, wave_id, now)
    # `done`: this send finished the wave (its webhook event, `wave.finished`); others leave work for later.
    audit.record(conn, actor, "wave.sent", campaign_id, wave=wave_name, counts=counts, attempted=attempted,
                 **({"done": True} if done else {}))
    return counts, look, paused
