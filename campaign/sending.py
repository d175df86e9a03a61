"""The send loop: claim → render → send → record, at the campaign's rate, with retries, until every
delivery of the wave is settled (SPEC §6 `send`, G2–G5, §8).

One `Worker` per process: it claims batches of deliveries under a lease, renders and builds each message
(CPU), sends them over its own transport connections (I/O, concurrently), and records the outcomes in one
transaction per batch. `send_wave` prepares the wave (the ledger rows, their send windows), runs one worker
in-process or N worker processes, reports progress, and returns a summary.

The campaign's rate is shared: each live worker (heartbeat within `HEARTBEAT_STALE`) sends at
`rate_per_second / live workers`, recounted at every heartbeat (see `campaign.policies`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from campaign import accounts, audit, campaigns, db, ledger, suppressions
from campaign.config import Config
from campaign.definition import Definition, WaveDef
from campaign.errors import CampaignError, StateError, UsageError
from campaign.mime import HeaderInjection, Parts, message_id
from campaign.models import CANCELLED, PAUSED
from campaign.policies import FailureTracker, RateLimiter, RetryPolicy, WindowCache, share
from campaign.previews import builder_for
from campaign.rendering import DeviceView, Recipient, Renderer
from campaign.transport import Envelope, Outcome, Transport, make_transport

HEARTBEAT = 5.0
HEARTBEAT_STALE = dt.timedelta(seconds=20)
IDLE_POLL_MAX = 1.0
COMMIT_GATHER = 0.003  # seconds a commit waits for company: fewer, larger transactions


@dataclass(frozen=True)
class SendOptions:
    ignore_window: bool = False
    workers: int = 1
    batch: int = 250
    dry_run: bool = False


@dataclass
class SendSummary:
    campaign: str
    wave: str
    counts: dict[str, int]
    attempted: int = 0
    elapsed: float = 0.0
    db_seconds: float = 0.0
    waiting_window: int = 0
    paused: str | None = None
    dry_run: bool = False
    preview: dict[str, Any] = field(default_factory=dict)


class _DbClock:
    """Adds up the time spent waiting on the database, for the summary (goal: a small share)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _DbClock:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


# -- preparing a wave ------------------------------------------------------------------------------------

def _wave_row(conn: Connection, campaign_id: int, name: str) -> Any:
    row = conn.execute(text("SELECT id, name, state, paused_reason, at, expires, audience FROM wave "
                            "WHERE campaign_id = :c AND name = :n"), {"c": campaign_id, "n": name}).first()
    return row


def prepare(conn: Connection, slug: str, wave_name: str, actor: str, ignore_window: bool,
            now: dt.datetime) -> tuple[campaigns.CampaignRow, WaveDef, int, int]:
    """Check the campaign may send this wave now, add the wave's missing ledger rows and their send
    windows. Returns (campaign, wave, wave id, rows added). Raises StateError when it may not."""
    c = campaigns.get(conn, slug)
    d = c.definition
    try:
        wave = d.wave(wave_name)
    except KeyError:
        raise UsageError(f"no wave {wave_name!r} in {slug} (waves: {', '.join(w.name for w in d.waves)})") \
            from None
    row = _wave_row(conn, c.id, wave_name)
    if c.state == CANCELLED:
        raise StateError(f"campaign {slug!r} is cancelled: nothing more is sent")
    if c.state == PAUSED:
        raise StateError(f"campaign {slug!r} is paused ({c.state_reason or 'no reason given'}): "
                         f"`campaign resume {slug}` first")
    if row.state == "paused":
        raise StateError(f"wave {wave_name!r} paused itself: {row.paused_reason}. Fix the cause, then "
                         f"`campaign resume {slug}`")
    if now >= wave.expires:
        n = ledger.expire(conn, row.id, now)
        conn.execute(ledger.timed_text("UPDATE wave SET state = 'done', finished_at = :t WHERE id = :w", "t"),
                     {"t": now, "w": row.id})
        raise StateError(f"wave {wave_name!r} expired at {wave.expires.isoformat()}: it is never sent after "
                         f"that ({n} pending deliveries marked expired)")
    added = ledger.materialize(conn, d, c.id, row.id, wave.audience, wave.expires, now)
    if not d.send_window.always_open and not ignore_window:
        # (Rows left without a time are checked against the window when claimed: this only spares
        # a sender the claims of people who are asleep.)
        ledger.plan_windows(conn, row.id, d.send_window, now)
    conn.execute(ledger.timed_text("UPDATE wave SET state = 'sending', materialized_at = COALESCE(materialized_at, :t) "
                           "WHERE id = :w", "t"), {"t": now, "w": row.id})
    audit.record(conn, actor, "wave.send", c.id, wave=wave_name, added=added, ignore_window=ignore_window)
    return c, wave, int(row.id), added


def _dry_run_preview(conn: Connection, wave_id: int, ignore_window: bool, now: dt.datetime) -> dict[str, Any]:
    by_locale = {loc: int(n) for loc, n in conn.execute(text(
        "SELECT a.locale, COUNT(*) FROM delivery dl JOIN account a ON a.id = dl.account_id "
        "WHERE dl.wave_id = :w AND dl.state = 'pending' GROUP BY a.locale ORDER BY a.locale"), {"w": wave_id}).all()}
    first = [{"account_id": r[0], "email": r[1], "locale": r[2]} for r in conn.execute(text(
        "SELECT a.id, a.email, a.locale FROM delivery dl JOIN account a ON a.id = dl.account_id "
        "WHERE dl.wave_id = :w AND dl.state = 'pending' ORDER BY dl.id LIMIT 10"), {"w": wave_id}).all()]
    look = ledger.outlook(conn, wave_id, now, ignore_window)
    return {"by_locale": by_locale, "first": first, "due_now": look.due_now, "waiting_window": look.waiting_window}


# -- the worker -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    config: Config
    campaign_id: int
    slug: str
    wave: str
    wave_id: int
    options: SendOptions


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    """Sends one wave from one process until nothing is left that it can send."""

    def __init__(self, engine: Engine, job: _Job, transport: Transport | None = None,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.engine, self.job = engine, job
        self.id = ledger.worker_id()
        self.host = socket.gethostname()
        with db.read(engine) as conn:
            self.campaign = campaigns.get(conn, job.slug)
        self.d: Definition = self.campaign.definition
        self.wave = self.d.wave(job.wave)
        self.renderer = Renderer(self.d, job.config.templates)
        self.builder = builder_for(self.d, self.wave)
        self.retry = RetryPolicy.from_limits(self.d.limits)
        self.failures = FailureTracker(200)
        self.windows = WindowCache(self.d.send_window)
        self.limiter = RateLimiter(self.d.limits.rate_per_second, burst=max(1.0, self.d.limits.rate_per_second / 10))
        self.transport = transport or make_transport(job.config, concurrency=self.d.limits.concurrency)
        self.on_batch = on_batch
        self.clock = _DbClock()
        self.attempted = 0
        self.paused: str | None = None
        self._rng = random.Random()
        self._last_beat = 0.0
        self._in_flight: set[int] = set()  # claimed, not yet recorded: their leases are renewed
        self._last_error = ""  # the last failure's detail, for the pause reason
        # Group commit: a message the server accepted is recorded before its sender takes the next one,
        # and at most `concurrency` are between the two, so a crash resends at most that many (G2).
        self._slots = asyncio.Semaphore(self.d.limits.concurrency)
        self._queue: list[tuple[ledger.Result, str | None, asyncio.Future[None]]] = []
        self._queued = asyncio.Event()

    # database steps, each one short transaction

    def _beat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_beat < HEARTBEAT:
            return
        self._last_beat = time.monotonic()
        now = db.utcnow()
        with self.clock, db.write(self.engine) as conn:
            conn.execute(ledger.timed_text(
                "INSERT INTO worker (id, host, pid, campaign_id, wave_id, started_at, heartbeat_at) "
                "VALUES (:id, :host, :pid, :c, :w, :now, :now) ON CONFLICT (id) DO UPDATE SET heartbeat_at = :now",
                "now"), {"id": self.id, "host": self.host, "pid": os.getpid(), "c": self.job.campaign_id,
                         "w": self.job.wave_id, "now": now})
            workers = conn.execute(text("SELECT id, host, pid, heartbeat_at FROM worker WHERE campaign_id = :c"),
                                   {"c": self.job.campaign_id}).all()
            dead = [w.id for w in workers if w.host == self.host and w.id != self.id and not _alive(w.pid)]
            stale_before = now - HEARTBEAT_STALE
            live = [w for w in workers if w.id not in dead and
                    db.UTCDateTime().process_result_value(w.heartbeat_at, conn.dialect) >= stale_before]  # type: ignore[operator]
            if dead:
                conn.execute(text("DELETE FROM worker WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)), {"ids": dead})
            ledger.reclaim(conn, self.job.wave_id, now, dead)
            if self._in_flight:
                ledger.renew(conn, self.id, sorted(self._in_flight), now)
        self.limiter.set_rate(share(self.d.limits.rate_per_second, max(1, len(live))))

    def _leave(self) -> None:
        with self.clock, db.write(self.engine) as conn:
            conn.execute(text("DELETE FROM worker WHERE id = :id"), {"id": self.id})

    def _stopped(self, conn: Connection) -> str | None:
        row = conn.execute(text("SELECT c.state, c.state_reason, w.state, w.paused_reason FROM campaign c "
                                "JOIN wave w ON w.campaign_id = c.id WHERE w.id = :w"), {"w": self.job.wave_id}).one()
        if row[0] in (PAUSED, CANCELLED):
            return f"campaign {row[0]}" + (f": {row[1]}" if row[1] else "")
        if row[2] == "paused":
            return f"wave paused: {row[3]}"
        return None

    def _claim(self) -> list[ledger.Claimed]:
        now = db.utcnow()
        with self.clock, db.write(self.engine) as conn:
            stop = self._stopped(conn)
            if stop:
                self.paused = stop
                return []
            claimed = ledger.claim(conn, self.job.wave_id, self.id, self.job.options.batch, now,
                                   self.job.options.ignore_window)
        self._in_flight.update(c.id for c in claimed)
        return claimed

    def _load(self, claimed: list[ledger.Claimed]) -> tuple[dict[str, Recipient], dict[str, list[DeviceView]],
                                                           set[str]]:
        ids = [c.account_id for c in claimed]
        with self.clock, db.read(self.engine) as conn:
            people = {r[0]: Recipient(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(
                text("SELECT id, email, name, locale, timezone FROM account WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)), {"ids": ids}).all()}
            rows: Sequence[Any]
            if self.wave.audience == "changed":
                rows = conn.execute(text(
                    "SELECT sc.account_id, d.id, d.name, d.model FROM setting_change sc JOIN device d ON d.id = "
                    "sc.device_id WHERE sc.campaign_id = :c AND sc.state = 'changed' AND sc.account_id IN :ids "
                    "ORDER BY sc.account_id, d.id").bindparams(bindparam("ids", expanding=True)),
                    {"c": self.job.campaign_id, "ids": ids}).all()
            else:  # the affected devices, by the audience's own definition
                rows = [(person.account_id, v.device_id, v.name, v.model)
                        for person, views in accounts.iter_affected(conn, self.d.setting, self.d.from_value,
                                                                    self.d.countries, self.d.device_models,
                                                                    account_ids=ids)
                        for v in views]
            devices: dict[str, list[DeviceView]] = defaultdict(list)
            for r in rows:
                devices[r[0]].append(DeviceView(r[1], r[2], r[3]))
            emails = [p.email.lower() for p in people.values()]
            suppressed = set(conn.execute(text("SELECT lower(email) FROM suppression WHERE lower(email) IN :e")
                                          .bindparams(bindparam("e", expanding=True)),
                                          {"e": emails}).scalars().all()) if emails else set()
        return people, devices, suppressed

    async def _committer(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(COMMIT_GATHER)  # let other sends that complete meanwhile join this commit
            batch, self._queue = self._queue, []
            self._queued.clear()
            try:
                self._record([r for r, _, _ in batch], [(e, r.error or "") for r, e, _ in batch if e])
            except BaseException as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                raise
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _record(self, results: list[ledger.Result], bounces: list[tuple[str, str]]) -> None:
        if not results:
            return
        self._in_flight.difference_update(r.id for r in results)
        with self.clock, db.write(self.engine) as conn:
            ledger.record(conn, self.id, results)
            for email, reason in bounces:
                suppressions.add(conn, email, f"bounced: {reason}", f"campaign:{self.job.slug}", source="bounce",
                                 campaign_id=self.job.campaign_id)

    def _pause(self, reason: str) -> None:
        with self.clock, db.write(self.engine) as conn:
            conn.execute(text("UPDATE wave SET state = 'paused', paused_reason = :r WHERE id = :w"),
                         {"r": reason[:1024], "w": self.job.wave_id})
            audit.record(conn, f"campaign:{self.job.slug}", "wave.pause", self.job.campaign_id,
                         wave=self.job.wave, reason=reason)
        self.paused = f"wave paused: {reason}"

    # the loop

    async def _heartbeat(self) -> None:
        # Also during a long batch (a slow relay, a low rate): the leases of what is in flight must not
        # run out, or another worker would take those deliveries and send them again.
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._beat()

    async def run(self) -> None:
        self._beat(force=True)
        committer = asyncio.create_task(self._committer())
        heart = asyncio.create_task(self._heartbeat())
        try:
            async with self.transport:
                while self.paused is None:
                    self._beat()
                    claimed = self._claim()
                    if self.paused is not None:
                        break
                    if not claimed:
                        with self.clock, db.read(self.engine) as conn:
                            look = ledger.outlook(conn, self.job.wave_id, db.utcnow(), self.job.options.ignore_window)
                        if look.due_now:
                            continue
                        if not look.waiting_retry and not look.in_flight:
                            break  # settled, but for deliveries waiting for their send window
                        wait = IDLE_POLL_MAX
                        if look.next_due is not None:
                            wait = min(wait, max(0.05, (look.next_due - db.utcnow()).total_seconds()))
                        await asyncio.sleep(wait)
                        continue
                    await self._batch(claimed)
                    if self.on_batch is not None:
                        self.on_batch()
        finally:
            committer.cancel()
            heart.cancel()
            self._leave()

    async def _batch(self, claimed: list[ledger.Claimed]) -> None:
        people, devices, suppressed = self._load(claimed)
        now = db.utcnow()
        results: list[ledger.Result] = []
        tasks: list[asyncio.Task[None]] = []
        active: set[asyncio.Task[None]] = set()
        ahead = 2 * self.d.limits.concurrency
        broken: str | None = None
        for n, c in enumerate(claimed):
            if broken is not None:  # hand back, untried, what comes after a message that would not build
                results.append(ledger.Result(c.id, "pending", now, attempts_back=1))
                continue
            person = people.get(c.account_id)
            if person is None or person.email.lower() in suppressed:
                results.append(ledger.Result(c.id, "suppressed", now, error="the address is suppressed"))
                continue
            if now >= self.wave.expires:
                results.append(ledger.Result(c.id, "expired", now, error="the wave expired before it could be sent"))
                continue
            if not self.job.options.ignore_window and not self.windows.is_open(person.timezone, now):
                results.append(ledger.Result(c.id, "pending", now, attempts_back=1,
                                             not_before=self.windows.next_opening(person.timezone, now)))
                continue
            views = devices.get(c.account_id, [])
            if not views:
                results.append(ledger.Result(c.id, "skipped", now, error="no longer in the wave's audience"))
                continue
            try:
                rendered = self.renderer.render(self.wave, person, views)
                mid = message_id(self.d.slug, self.wave.name, person.account_id, self.d.sender_domain)
                data = self.builder.build(Parts(person.name, person.email, rendered.subject, rendered.text,
                                                rendered.html, mid, now))
            except (CampaignError, HeaderInjection, ValueError) as exc:
                # G5: this message is not sent, and the wave pauses with the error for a person to fix.
                results.append(ledger.Result(c.id, "pending", now, attempts_back=1, error=str(exc)))
                broken = f"account {person.account_id}: {exc}"
                continue
            envelope = Envelope(self.d.sender_address, (person.email,), data, mid)
            task = asyncio.create_task(self._send(c, envelope, rendered.template_locale, person.email))
            tasks.append(task)
            active.add(task)
            if len(active) >= ahead:
                # Build only a little ahead of the connections: CPU and network then take turns evenly.
                _done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
            elif n % 4 == 3:
                await asyncio.sleep(0)
        self._record(results, [])  # what needed no SMTP: suppressed, expired, window, skipped, handed back
        await asyncio.gather(*tasks)
        if broken is not None:
            self._pause(broken)
            return
        if self.failures.tripped(self.d.limits.pause_on_failure_rate):
            self._pause(f"{self.failures.failures} of the last {self.failures.seen} attempts failed "
                        f"(limit {self.d.limits.pause_on_failure_rate:.0%}); last error: {self._last_error}")

    async def _send(self, c: ledger.Claimed, envelope: Envelope, locale: str, address: str) -> None:
        async with self._slots:
            await self.limiter.acquire()
            outcome: Outcome = await self.transport.send(envelope)
            result = self._outcome(c, envelope, locale, outcome)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append((result, address if result.state == "bounced" else None, done))
            self._queued.set()
            await done

    def _outcome(self, c: ledger.Claimed, envelope: Envelope, locale: str, outcome: Outcome) -> ledger.Result:
        self.attempted += 1
        now = db.utcnow()
        self.failures.record(outcome.status != "sent")
        if outcome.status == "sent":
            return ledger.Result(c.id, "sent", now, message_id=envelope.message_id, locale=locale)
        self._last_error = outcome.detail
        if outcome.status == "failed":  # the relay cannot take it; the address is not at fault: no suppression
            return ledger.Result(c.id, "failed", now, locale=locale, error=outcome.detail)
        if outcome.status == "permanent":
            return ledger.Result(c.id, "bounced", now, message_id=envelope.message_id, locale=locale,
                                 error=outcome.detail)
        decision = self.retry.decide(c.attempts, now, self._rng)
        if decision.retry:
            return ledger.Result(c.id, "pending", now, locale=locale, error=outcome.detail,
                                 next_attempt_at=decision.at)
        return ledger.Result(c.id, "failed", now, locale=locale, error=outcome.detail)


def _worker_process(job: _Job) -> tuple[int, float]:
    engine = db.make_engine(job.config.database_url)
    try:
        worker = Worker(engine, job)
        asyncio.run(worker.run())
        return worker.attempted, worker.clock.seconds
    finally:
        engine.dispose()


# -- the command ----------------------------------------------------------------------------------------

def send_wave(engine: Engine, config: Config, slug: str, wave_name: str, options: SendOptions,
              progress: Callable[[dict[str, int]], None] | None = None,
              transport: Transport | None = None) -> SendSummary:
    """Send a wave now and wait until every delivery is settled (but those waiting for their window)."""
    start = time.perf_counter()
    now = db.utcnow()
    clock = _DbClock()
    with clock, db.write(engine) as conn:
        c, _wave, wave_id, _added = prepare(conn, slug, wave_name, config.actor, options.ignore_window, now)
        if options.dry_run:
            preview = _dry_run_preview(conn, wave_id, options.ignore_window, now)
            counts = ledger.counts(conn, wave_id)
            conn.rollback()
            return SendSummary(slug, wave_name, counts, dry_run=True, preview=preview)
    job = _Job(config, c.id, slug, wave_name, wave_id, options)

    def report() -> None:
        if progress is not None:
            with db.read(engine) as conn:
                progress(ledger.counts(conn, wave_id))

    attempted = 0
    if options.workers <= 1:
        worker = Worker(engine, job, transport=transport, on_batch=report)
        asyncio.run(worker.run())
        attempted, clock.seconds = worker.attempted, clock.seconds + worker.clock.seconds
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(options.workers) as pool:
            pending = pool.map_async(_worker_process, [job] * options.workers)
            while not pending.ready():
                report()
                pending.wait(0.5)
            for n, secs in pending.get():
                attempted += n
                clock.seconds += secs / options.workers  # the workers' database waits overlap
    with clock, db.write(engine) as conn:
        counts = ledger.counts(conn, wave_id)
        look = ledger.outlook(conn, wave_id, db.utcnow(), options.ignore_window)
        row = _wave_row(conn, c.id, wave_name)
        paused = row.paused_reason if row.state == "paused" else None
        if not paused and not look.waiting_window and not counts["pending"] and not counts["sending"]:
            conn.execute(ledger.timed_text("UPDATE wave SET state = 'done', finished_at = :t WHERE id = :w", "t"),
                         {"t": db.utcnow(), "w": wave_id})
        audit.record(conn, config.actor, "wave.sent", c.id, wave=wave_name, counts=counts, attempted=attempted)
    if progress is not None:
        progress(counts)
    return SendSummary(slug, wave_name, counts, attempted=attempted, elapsed=time.perf_counter() - start,
                       db_seconds=clock.seconds, waiting_window=look.waiting_window, paused=paused)
