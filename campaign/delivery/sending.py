"""The send loop: claim → triage → compose → send → record, at the campaign's rate, with retries, until
every delivery of the wave is settled (SPEC §6 `send`, G2–G5, §8).

Three parts, each testable alone:

- **triage** (`Triage`, `after_send`): what becomes of a claimed delivery — suppressed, expired, outside its
  window, skipped, handed back, or composed and sent; and what an SMTP outcome makes of it. Pure: the claimed
  row, the loaded data and the clock in, a `Result` out.
- **the composer** (`Composer`): render and build one message → an `Envelope`, or a `ComposeError`.
- **the loop** (`Worker`): claims batches under a lease and sends them over its own transport connections.
  The event loop never waits on the database: every statement runs in the worker's database threads
  (`Database`), which retry a lost connection with a bounded backoff. Outcomes are group-committed, and at
  most `concurrency` messages the server accepted wait to be recorded at any time: a connection that would
  exceed that waits just before its data goes (the transport's gate), so a crash resends at most
  `concurrency` messages per worker, with the same Message-ID (G2). Commits run while the connections go
  on: a message's commit is hidden behind the next message's MAIL, RCPT and DATA.

`send_wave` prepares the wave (the ledger rows, their send windows), runs one worker in-process or N worker
processes, reports progress, and returns a summary. The campaign's rate is shared: each live worker
(heartbeat within `HEARTBEAT_STALE`) sends at `rate_per_second / live workers`, recounted at every heartbeat
(see `campaign.policies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import multiprocessing
import os
import random
import selectors
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, errors, verp
from campaign.config import Config
from campaign.connection import Database, DatabaseLost, call
from campaign.cutoff import approval as approvals
from campaign.definition import Definition, WaveDef
from campaign.delivery.transport import Envelope, Outcome, Transport, make_transport
from campaign.delivery.transport import parse_url as parse_smtp_url
from campaign.errors import CampaignError, RenderFailure, StateError, UsageError
from campaign.intake import suppressions
from campaign.models import BOUNCED, CANCELLED, EXPIRED, FAILED, PAUSED, PENDING, SENT, SKIPPED, SUPPRESSED
from campaign.notices.mime import HeaderInjection, MessageTooLarge, Parts, message_id
from campaign.notices.proofs import builder_for
from campaign.notices.rendering import Renderer
from campaign.policies import FailureTracker, RateLimiter, RetryPolicy, WindowCache, share
from campaign.recipients import DeviceView, Recipient
from campaign.store import audience, audit, deliveries
from campaign.store import campaigns as campaign_rows
from campaign.store import suppressions as suppression_rows
from campaign.store import workers as worker_rows
from campaign.store.deliveries import Claimed, Result

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between heartbeats (a write: leases renewed, dead workers' deliveries given back)
RECOUNT = 1.0  # seconds between counts of the live workers (a read): the rate share follows joins within this
HEARTBEAT_STALE = dt.timedelta(seconds=20)
FORGET_AFTER = dt.timedelta(minutes=10)  # a worker silent this long is removed from the worker table
IDLE_POLL_MAX = 1.0
IDLE_POLL_FIRST = 0.05  # the first look again while other workers' messages are under way (then 1.5 times longer)
PROGRESS_EVERY = 0.5  # seconds between counts for the progress, unless the caller asks less often
COMMIT_GATHER = 0.010  # seconds a commit may wait for company: fewer, larger transactions (see `_committer`)
# Transactions of outcomes written at once, each by a thread and a connection of its own. On PostgreSQL a commit
# waits for its WAL to reach the disk (fsync): while one waits, the next is written, and the server flushes
# both at once. SQLite has one writer at a time: a second would only wait for the lock.
COMMIT_LANES = {"postgresql": 2}
SWITCH_INTERVAL = 0.0005  # seconds a thread may keep the GIL while another wants it (see `Worker.run`)



class WaveExpired(StateError):
    """The wave's `expires` has passed: nothing of it goes out any more."""

    code = errors.EXPIRED

    def __init__(self, campaign_id: int, wave_id: int, wave: str, expires: dt.datetime) -> None:
        super().__init__(f"wave {wave!r} expired at {expires.isoformat()}")
        self.campaign_id, self.wave_id, self.wave, self.expires = campaign_id, wave_id, wave, expires


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
    db_seconds: float = 0.0  # the database held the send up (preparing, finishing, the loop idle waiting on it)
    gate_seconds: float = 0.0  # the connections waited at the gate (G2) or for a claim, on average, busy loop or not
    waiting_window: int = 0
    paused: str | None = None
    dry_run: bool = False
    preview: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- triage: what becomes of each claimed delivery (pure) --------------------------------------------------

@dataclass(frozen=True)
class Compose:
    """Triage's answer for a delivery to be composed and sent."""

    claimed: Claimed
    person: Recipient
    devices: tuple[DeviceView, ...]


EXPIRED_ERROR = deliveries.EXPIRED_ERROR


@dataclass
class Triage:
    """Decides, from the claimed row, the data loaded for it and the clock, whether a delivery is sent.

    `windows` is None under --ignore-window. The only state is `WindowCache`'s memo of zone openings."""

    expires: dt.datetime
    windows: WindowCache | None

    def __call__(self, c: Claimed, person: Recipient | None, devices: list[DeviceView] | tuple[DeviceView, ...],
                 suppressed: bool, now: dt.datetime) -> Result | Compose:
        if person is None or suppressed:
            return Result(c.id, SUPPRESSED, now, error="the address is suppressed")
        if now >= self.expires:
            return Result(c.id, EXPIRED, now, error=EXPIRED_ERROR)
        if self.windows is not None and not self.windows.is_open(person.timezone, now):
            return Result(c.id, PENDING, now, attempts_back=1,
                          not_before=self.windows.next_opening(person.timezone, now))
        if not devices:
            return Result(c.id, SKIPPED, now, error="no longer in the wave's audience")
        return Compose(c, person, tuple(devices))


def handed_back(c: Claimed, now: dt.datetime, error: str | None = None) -> Result:
    """Back to `pending`, the attempt not counted: not tried (after a message that would not build, or
    when the send stops), or tried and not built (`error`, G5)."""
    return Result(c.id, PENDING, now, attempts_back=1, error=error)


def after_send(c: Claimed, outcome: Outcome, message_id: str, locale: str, retry: RetryPolicy,
               rng: random.Random, now: dt.datetime) -> Result:
    """What an SMTP outcome makes of the delivery."""
    if outcome.status == "sent":
        return Result(c.id, SENT, now, message_id=message_id, locale=locale)
    if outcome.status == "failed":  # the relay cannot take it; the address is not at fault: no suppression
        return Result(c.id, FAILED, now, locale=locale, error=outcome.detail)
    if outcome.status == "permanent":
        return Result(c.id, BOUNCED, now, message_id=message_id, locale=locale, error=outcome.detail)
    decision = retry.decide(c.attempts, now, rng)
    if decision.retry:
        return Result(c.id, PENDING, now, locale=locale, error=outcome.detail, next_attempt_at=decision.at)
    return Result(c.id, FAILED, now, locale=locale, error=outcome.detail)


# -- the composer ---------------------------------------------------------------------------------------

class ComposeError(Exception):
    """No message of the wave can be built (a template that does not load, a broken sender): it is not sent,
    the wave pauses (G5)."""


class MessageFailed(Exception):
    """This one message could not be built for its recipient (an exception while rendering their data, a
    message above `max_message_bytes`): that delivery is `failed` with the reason; the wave goes on."""


@dataclass(frozen=True)
class Composed:
    envelope: Envelope
    locale: str  # the template locale it was rendered in


class Composer:
    """Renders and builds one wave's messages."""

    def __init__(self, definition: Definition, wave: WaveDef, renderer: Renderer) -> None:
        self.d, self.wave, self.renderer = definition, wave, renderer
        self.builder = builder_for(definition, wave)
        self.sender, self.domain = definition.sender_address, definition.sender_domain  # parsed once

    def __call__(self, person: Recipient, devices: tuple[DeviceView, ...], now: dt.datetime) -> Composed:
        try:
            rendered = self.renderer.render(self.wave, person, devices)
            mid = message_id(self.d.slug, self.wave.name, person.account_id, self.domain,
                             verp.message_id_key(self.d))  # keyed when the return path is signed
            data = self.builder.build(Parts(person.name, person.email, rendered.subject, rendered.text,
                                            rendered.html, mid, now))
            sender = verp.envelope_sender(self.d, mid, self.sender)  # [bounces]: a signed return path per delivery
        except (RenderFailure, HeaderInjection, MessageTooLarge) as exc:
            raise MessageFailed(str(exc)) from exc
        except (CampaignError, ValueError) as exc:
            raise ComposeError(str(exc)) from exc
        except Exception as exc:  # whatever else one person's data ran into: that message, not the send
            raise MessageFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        return Composed(Envelope(sender, (person.email,), data, mid, wire=True), rendered.template_locale)


# -- preparing a wave ------------------------------------------------------------------------------------

def prepare(conn: Connection, slug: str, wave_name: str, ignore_window: bool,
            now: dt.datetime, dry_run: bool = False) -> tuple[campaigns.CampaignRow, WaveDef, int, int]:
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
    approvals.require(conn, c, "send", dry_run=dry_run)
    added = deliveries.materialize(conn, c.id, row.id, audience.accounts(d, c.id, wave.audience), wave.expires,
                                   now)
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


# -- the worker -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    config: Config
    campaign_id: int
    slug: str
    wave: str
    wave_id: int
    options: SendOptions


def _stop_reason(campaign_state: str, campaign_reason: str | None, wave_state: str,
                 wave_reason: str | None) -> str | None:
    """Why sending must stop now (its campaign paused or cancelled, the wave paused), or None."""
    if campaign_state in (PAUSED, CANCELLED):
        return f"campaign {campaign_state}" + (f": {campaign_reason}" if campaign_reason else "")
    if wave_state == campaign_rows.PAUSED:
        return f"wave paused: {wave_reason}"
    return None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def machine() -> str:
    """This process table's name in the worker table: the host name, and a digest of the boot and of the
    PID namespace. A worker is known dead by its pid only to a process that shares its process table;
    two containers or cloned machines with one host name do not (they wait for the lease to run out)."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12] if parts else "unknown"
    return f"{socket.gethostname()}#{digest}"


def _live(rows: list[worker_rows.WorkerRow], now: dt.datetime, dead: set[str] | None = None) -> int:
    """How many of the campaign's workers are live: a heartbeat within HEARTBEAT_STALE, not known dead."""
    return sum(1 for w in rows if w.heartbeat_at >= now - HEARTBEAT_STALE and not (dead and w.id in dead))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _Batch:
    """A claimed batch and what triage needs of it, read in the claim's transaction."""

    claimed: list[Claimed]
    people: dict[str, Recipient]
    devices: dict[str, list[DeviceView]]
    suppressed: set[str]
    stop: str | None = None


class _IdleClock(selectors.DefaultSelector):
    """A worker's event-loop selector that clocks how long the loop sat idle — nothing to do but wait — while
    some task of the send waited on the database (`Worker._on_db`): the time the database held the send up.
    A task waiting on the database while the loop is busy with others costs the send nothing."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.held = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self.worker._on_db or timeout == 0:  # a timeout of 0: the loop has work ready, it only polls
            return super().select(timeout)
        start = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.held += time.perf_counter() - start


class Worker:
    """Sends one wave from one process until nothing is left that it can send."""

    def __init__(self, engine: Engine, job: _Job, transport: Transport | None = None,
                 progress: Callable[[dict[str, int]], None] | None = None,
                 progress_every: float = PROGRESS_EVERY) -> None:
        self.engine, self.job = engine, job
        self.id = worker_id()
        self.host = machine()
        self.campaign = call(engine, campaigns.get, job.slug, write=False)
        self.d: Definition = self.campaign.definition
        self.wave = self.d.wave(job.wave)
        self.compose = Composer(self.d, self.wave, Renderer(self.d, job.config.templates))
        self.triage = Triage(self.wave.expires, None if job.options.ignore_window else WindowCache(self.d.send_window))
        self.retry = RetryPolicy.from_limits(self.d.limits)
        self.failures = FailureTracker(200)
        self.limiter = RateLimiter(self.d.limits.rate_per_second, burst=max(1.0, self.d.limits.rate_per_second / 10))
        self.transport = transport or make_transport(job.config, concurrency=self.d.limits.concurrency)
        self.progress, self.progress_every = progress, progress_every
        self.attempted = 0
        self.paused: str | None = None
        self.db_wait = 0.0  # the loop waiting for a claim (see `gate_seconds`)
        self._commit_wait = 0.0  # connections waiting at the gate, summed over them
        self._on_db = 0  # tasks waiting on the database now (see `_IdleClock`)
        self._clock: _IdleClock | None = None
        self._rng = random.Random()
        self._in_flight: set[int] = set()  # claimed, not yet recorded: their leases are renewed
        self._last_error = ""  # the last failure's detail, for the pause reason
        self._last_progress = 0.0
        self._reporting: asyncio.Task[None] | None = None
        self._concurrency = self.d.limits.concurrency
        # Group commit: at most `concurrency` messages the server accepted wait to be recorded (the gate in
        # `_send`), so a crash resends at most that many (G2); the connections go on meanwhile.
        self._slots = asyncio.Semaphore(self._concurrency)
        self._unrecorded = asyncio.Semaphore(self._concurrency)
        self._queue: list[tuple[list[Result], list[tuple[str, str]], asyncio.Future[None]]] = []
        self._queued = asyncio.Event()
        self._urgent = asyncio.Event()  # set when many queued outcomes hold a gate permit: commit now
        self._gated = 0
        self._db_gone: BaseException | None = None
        self._sends: set[asyncio.Task[None]] = set()  # each leaves the set when done (`_sent`)
        self._room = asyncio.Semaphore(2 * self._concurrency)  # messages built ahead of the connections
        self._send_error: BaseException | None = None  # the first send that raised (a database gone for good)
        self._records: list[asyncio.Future[None]] = []  # commits nobody waits for (triage's results)
        self._taking = asyncio.Lock()  # the committer gathering the next transaction
        self._commit_lanes = COMMIT_LANES.get(engine.dialect.name, 1)
        self.db = Database(engine, self._commit_lanes)

    @property
    def db_seconds(self) -> float:
        """How long the database held the send up: the time the event loop sat idle while some task waited on
        the database (a connection at the gate for earlier commits, the loop for a claim). Clocked when the
        worker runs on its own loop (`run_to_end`); 0 otherwise."""
        return self._clock.held if self._clock is not None else 0.0

    @property
    def gate_seconds(self) -> float:
        """How long the tasks waited on the database, busy loop or not: the loop waiting for a claim, plus the
        time the connections waited at the gate for commits to catch up, averaged over the connections."""
        return self.db_wait + self._commit_wait / self._concurrency

    # database transactions (each runs in the database thread)

    def _beat_tx(self, conn: Connection, in_flight: list[int], now: dt.datetime) -> int:
        job = self.job
        worker_rows.beat(conn, self.id, self.host, os.getpid(), job.campaign_id, job.wave_id, now)
        rows = worker_rows.of_campaign(conn, job.campaign_id)
        # Dead: a worker of this process table whose pid is gone; any worker silent for FORGET_AFTER (its
        # leases ran out long ago: it is forgotten, wherever it ran).
        dead = [w.id for w in rows if w.id != self.id and (w.heartbeat_at < now - FORGET_AFTER
                                                           or (w.host == self.host and not _alive(w.pid)))]
        worker_rows.remove(conn, dead)
        deliveries.reclaim(conn, job.wave_id, now, dead)
        deliveries.renew(conn, self.id, in_flight, now)
        return _live(rows, now, set(dead))

    def _claim_tx(self, conn: Connection, now: dt.datetime) -> _Batch:
        """Claim a batch: one statement that commits by itself (on SQLite it holds the one write lock that
        every worker process shares); what triage needs of the batch is read afterwards, by `_load_tx`. The
        check for a stop comes first: a pause committed between it and the claim stops the worker after this
        batch, as one committed just after the claim does."""
        stop = _stop_reason(*campaign_rows.stopped(conn, self.job.wave_id))
        if stop:
            return _Batch([], {}, {}, set(), stop)
        claimed = deliveries.claim(conn, self.job.wave_id, self.id, self.job.options.batch, now,
                                   self.job.options.ignore_window)
        return _Batch(claimed, {}, {}, set())

    def _load_tx(self, conn: Connection, batch: _Batch) -> _Batch:
        """The recipients, their devices and suppressions for a claimed batch (a read transaction)."""
        ids = [c.account_id for c in batch.claimed]
        people: dict[str, Recipient] = {}
        devices: dict[str, list[DeviceView]] = {}
        if self.wave.audience == "changed":
            for account_id, view in audience.changed_devices(conn, self.job.campaign_id, ids):
                devices.setdefault(account_id, []).append(view)
        else:  # the affected devices, by the audience's own definition, with their owners
            for person, views in audience.iter_affected(conn, self.d, account_ids=ids):
                people[person.account_id] = person
                devices[person.account_id] = views
        missing = [i for i in ids if i not in people]  # a `changed` wave's, or no longer affected (skipped)
        if missing:
            people.update(audience.recipients(conn, missing))
        return _Batch(batch.claimed, people, devices,
                      suppression_rows.suppressed(conn, (p.email for p in people.values())))

    def _record_tx(self, conn: Connection, results: list[Result], bounces: list[tuple[str, str]]) -> None:
        deliveries.record(conn, self.id, results)
        for address, reason in bounces:
            suppressions.add(conn, address, f"bounced: {reason}", f"campaign:{self.job.slug}", source="bounce",
                             campaign_id=self.job.campaign_id)

    def _pause_tx(self, conn: Connection, reason: str) -> None:
        campaign_rows.pause_wave(conn, self.job.wave_id, reason)
        audit.record(conn, f"campaign:{self.job.slug}", "wave.pause", self.job.campaign_id, wave=self.job.wave,
                     reason=reason)

    def _leave_tx(self, conn: Connection) -> None:
        worker_rows.remove(conn, [self.id])

    # the tasks beside the loop

    async def _beat(self) -> None:
        self._take_share(await self.db.write(self._beat_tx, sorted(self._in_flight), db.utcnow()))

    def _live_tx(self, conn: Connection, now: dt.datetime) -> int:
        return _live(worker_rows.of_campaign(conn, self.job.campaign_id), now)

    def _take_share(self, live: int) -> None:
        self.limiter.set_rate(share(self.d.limits.rate_per_second, max(1, live)))

    async def _heartbeat(self) -> None:
        # Also during a long batch (a slow relay, a low rate): the leases of what is in flight must not
        # run out, or another worker would take those deliveries and send them again. Between beats, the
        # live workers are counted (a read, no write lock) so that the rate share follows a worker joining.
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(RECOUNT, HEARTBEAT))
            if time.monotonic() - last >= HEARTBEAT:
                last = time.monotonic()
                await self._beat()
            else:
                self._take_share(await self.db.read(self._live_tx, db.utcnow()))

    async def _committer(self, lane: str) -> None:
        """Writes what the connections queued, all of it in one transaction, while they go on sending. With
        several lanes, one gathers the next transaction while another's is being written."""
        while True:
            async with self._taking:
                await self._queued.wait()
                if COMMIT_GATHER and not self._urgent.is_set():
                    # Let other outcomes join this commit, unless half the accepted messages a worker may hold
                    # unrecorded are waiting already (connections would soon wait at the gate).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), COMMIT_GATHER)
                batch, self._queue = self._queue, []
                self._queued.clear()
                self._urgent.clear()
                self._gated = 0
            results = [r for rs, _, _ in batch for r in rs]
            try:
                bounces = [b for _, bs, _ in batch for b in bs]
                # Outcomes alone need no transaction: each row is written only while its lease holds, and one
                # left unwritten is sent again, as after a crash (G2). On PostgreSQL their one statement goes
                # over the lane's asynchronous connection, awaited on the event loop like a socket.
                if bounces:  # a bounce and its suppression go together
                    await self.db.write(self._record_tx, results, bounces, lane=lane)
                elif self.db.on_loop:
                    await self.db.alone(lane, deliveries.record_statement(self.engine.dialect, self.id, results))
                else:
                    await self.db.write(self._record_tx, results, bounces, lane=lane, alone=True)
            except BaseException as exc:  # the database is gone for good (after `call`'s retries), or a bug
                self._db_gone = exc
                for _, _, fut in [*batch, *self._queue]:
                    if not fut.done():
                        fut.set_exception(exc)
                self._queue = []
                for _ in range(self._concurrency):  # wake the sends waiting at the gate: they stop unsent
                    self._unrecorded.release()
                raise
            self._in_flight.difference_update(r.id for r in results)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _commit(self, results: list[Result], bounces: list[tuple[str, str]] | None = None,
                gated: bool = False) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._db_gone is not None:
            done.set_exception(self._db_gone)
            return done
        self._queue.append((results, bounces or [], done))
        self._queued.set()
        if gated:
            self._gated += 1
            if self._gated * 2 >= self._concurrency:
                self._urgent.set()
        return done

    # the loop

    def run_to_end(self) -> None:
        """`run` on an event loop of its own, whose selector clocks the time the database held it up."""
        self._clock = _IdleClock(self)
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(self._clock)) as runner:
            runner.run(self.run())

    async def run(self) -> None:
        # The database threads give the GIL back within half a millisecond when the event loop wants it
        # (the default is 5 ms: every socket call of the loop could wait that long behind a commit).
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
        try:
            await self._run()
        finally:
            sys.setswitchinterval(switch)

    async def _run(self) -> None:
        committers = [asyncio.create_task(self._committer(f"commit{i}")) for i in range(self._commit_lanes)]
        heart: asyncio.Task[None] | None = None
        fetch: asyncio.Task[_Batch] | None = None
        try:
            await self._beat()
            heart = asyncio.create_task(self._heartbeat())
            async with self.transport:
                fetch = asyncio.create_task(self._fetch())
                idle = IDLE_POLL_FIRST
                while self.paused is None:
                    batch = await self._waited(fetch)
                    fetch = None
                    if batch.stop:
                        self.paused = batch.stop
                        break
                    if not batch.claimed:
                        await self._drain()  # our own retries come due only once recorded
                        look = await self._waited(self.db.read(deliveries.outlook, self.job.wave_id, db.utcnow(),
                                                               self.job.options.ignore_window))
                        if not look.due_now:
                            if not look.waiting_retry and not look.in_flight:
                                break  # settled, but for deliveries waiting for their send window
                            wait = IDLE_POLL_MAX
                            if look.next_due is not None:
                                wait = min(wait, max(0.05, (look.next_due - db.utcnow()).total_seconds()))
                            if look.in_flight:
                                # Other workers' messages under way: this one is done when they are recorded,
                                # most within a second. Look soon, then less and less often (each look counts
                                # the wave's rows): a second's sleep here kept the whole send waiting.
                                wait, idle = min(wait, idle), min(1.5 * idle, IDLE_POLL_MAX)
                            await asyncio.sleep(wait)
                            if not self._in_flight:  # nothing of ours left unrecorded: lost leases come back now
                                await self._beat()
                        fetch = asyncio.create_task(self._fetch())
                        continue
                    idle = IDLE_POLL_FIRST
                    # Claim the next batch while this one is composed and sent.
                    fetch = asyncio.create_task(self._fetch())
                    await self._feed(batch)
                    self._report()
                await self._drain()
        finally:
            await self._stop(committers, heart, fetch)

    async def _waited(self, aw: Any) -> Any:
        start = time.perf_counter()
        self._on_db += 1
        try:
            return await aw
        finally:
            self._on_db -= 1
            self.db_wait += time.perf_counter() - start

    async def _fetch(self) -> _Batch:
        # Alone: on SQLite the write lock is held by the claim's UPDATE only (see `deliveries.claim`).
        batch: _Batch = await self.db.write(self._claim_tx, db.utcnow(), alone=True)
        self._in_flight.update(c.id for c in batch.claimed)
        if batch.claimed:
            batch = await self.db.read(self._load_tx, batch)
        return batch

    def _report(self) -> None:
        """Progress every `progress_every` seconds, counted beside the loop: the feed does not wait for it."""
        if self.progress is None or time.monotonic() - self._last_progress < self.progress_every:
            return
        if self._reporting is not None:
            if not self._reporting.done():
                return
            self._reporting.result()  # a failure of the last report (a bug) surfaces here
        self._last_progress = time.monotonic()
        self._reporting = asyncio.create_task(self._progress_now())

    async def _progress_now(self) -> None:
        assert self.progress is not None
        try:
            counts = await self.db.read(deliveries.counts, self.job.wave_id)
        except DatabaseLost:
            return  # the loop finds out on its own; the progress shows again when the database is back
        self.progress(counts)

    async def _feed(self, batch: _Batch) -> None:
        """Triage, compose and start sending each delivery of the batch; returns when all are under way."""
        now = db.utcnow()
        settled: list[Result] = []
        broken: str | None = None
        for n, c in enumerate(batch.claimed):
            if broken is not None:  # hand back, untried, what comes after a message that would not build
                settled.append(handed_back(c, now))
                continue
            person = batch.people.get(c.account_id)
            verdict = self.triage(c, person, batch.devices.get(c.account_id, ()),
                                  person is not None and person.email.lower() in batch.suppressed, now)
            if isinstance(verdict, Result):
                settled.append(verdict)
                continue
            try:
                composed = self.compose(verdict.person, verdict.devices, now)
            except MessageFailed as exc:
                # Issue 21: one person's message fails, with why; the rest of the wave goes on (and a
                # template that fails for many trips the failure rate below, pausing the wave).
                settled.append(Result(c.id, FAILED, now, error=f"not sent, the message could not be built: {exc}"))
                self.failures.record(True)
                self._last_error = f"account {verdict.person.account_id}: {exc}"
                continue
            except ComposeError as exc:
                # G5: this message is not sent, and the wave pauses with the error for a person to fix.
                settled.append(handed_back(c, now, error=str(exc)))
                broken = f"account {verdict.person.account_id}: {exc}"
                continue
            # Build only a little ahead of the connections: CPU and network then take turns evenly.
            full = self._room.locked()
            await self._room.acquire()  # when not full: at once, without a turn of the loop
            if not full and n % 4 == 3:
                await asyncio.sleep(0)
            if self._send_error is not None:  # a database that stayed away stops the send here
                self._room.release()
                raise self._send_error
            task = asyncio.create_task(self._send(c, composed, verdict.person.email))
            self._sends.add(task)
            task.add_done_callback(self._sent)
        if settled:  # what needed no SMTP: suppressed, expired, window, skipped, handed back
            self._record(self._commit(settled))
        if broken is not None:
            await self._drain()
            await self._pause(broken)
        elif self.failures.tripped(self.d.limits.pause_on_failure_rate):
            await self._drain()
            await self._pause(f"{self.failures.failures} of the last {self.failures.seen} attempts failed "
                              f"(limit {self.d.limits.pause_on_failure_rate:.0%}); last error: {self._last_error}")

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._room.release()
        if not task.cancelled() and task.exception() is not None and self._send_error is None:
            self._send_error = task.exception()

    async def _drain(self) -> None:
        """Wait until every message under way is sent and every outcome recorded."""
        records, self._records = self._records, []
        await asyncio.gather(*self._sends, *records)

    async def _pause(self, reason: str) -> None:
        await self.db.write(self._pause_tx, reason)
        self.paused = f"wave paused: {reason}"

    async def _send(self, c: Claimed, composed: Composed, address: str) -> None:
        held = False

        async def gate() -> None:
            # Called when the server is ready for the data, just before it can accept the message: at most
            # `concurrency` accepted messages may wait to be recorded (G2: a crash resends at most that many).
            # A connection waits here only when that many commits are behind; the commit of its previous
            # message goes on meanwhile, hidden behind this one's MAIL, RCPT and DATA.
            nonlocal held
            if self._unrecorded.locked():
                start = time.perf_counter()
                self._on_db += 1
                try:
                    await self._unrecorded.acquire()
                finally:
                    self._on_db -= 1
                    self._commit_wait += time.perf_counter() - start
            else:
                await self._unrecorded.acquire()
            held = True
            if self._db_gone is not None:
                raise self._db_gone

        async with self._slots:
            await self.limiter.acquire()
            try:
                outcome = await self.transport.send(composed.envelope, gate)
            except BaseException:
                if held:
                    self._unrecorded.release()
                raise
        self.attempted += 1
        self.failures.record(outcome.status != "sent")
        if outcome.status != "sent":
            self._last_error = outcome.detail
        result = after_send(c, outcome, composed.envelope.message_id, composed.locale, self.retry, self._rng,
                            db.utcnow())
        bounces = [(address, result.error or "")] if result.state == BOUNCED else []
        done = self._commit([result], bounces, gated=held)
        if held:
            done.add_done_callback(lambda _: self._unrecorded.release())
        self._record(done)

    def _record(self, done: asyncio.Future[None]) -> None:
        """Keep a commit's future until `_drain` waits for it (those that ended well need not be kept)."""
        if len(self._records) >= 1024:
            self._records = [f for f in self._records if not f.done() or f.cancelled() or f.exception()]
        self._records.append(done)

    async def _stop(self, committers: list[asyncio.Task[None]], heart: asyncio.Task[None] | None,
                    fetch: asyncio.Task[_Batch] | None) -> None:
        """Whatever ended the loop: hand back a claimed batch not yet fed, let what is under way finish
        (unless the database is gone), stop the helpers, leave the worker table."""
        try:
            if self._db_gone is None:
                if fetch is not None:
                    with_claims = await fetch
                    if with_claims.claimed:
                        now = db.utcnow()
                        self._record(self._commit([handed_back(c, now) for c in with_claims.claimed]))
                await self._drain()
                await self.db.write(self._leave_tx, retry_for=5.0)
        finally:
            tasks = [*self._sends, *committers, *(t for t in (heart, fetch, self._reporting) if t is not None)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for done in self._records:  # commits that failed with the database: the send reports why
                if done.done() and not done.cancelled():
                    done.exception()
            await self.db.aclose()


def _worker_context() -> Any:
    """How worker processes start: forked from this one when it can be done safely (Linux, and no other
    thread that could hold a lock at the fork), so they need not import everything again (a second of CPU
    each); otherwise spawned afresh."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_process(job: _Job) -> tuple[int, float, float]:
    engine = db.make_engine(job.config.database_url)
    try:
        worker = Worker(engine, job)
        worker.run_to_end()
        return worker.attempted, worker.db_seconds, worker.gate_seconds
    finally:
        engine.dispose()


# -- the command ----------------------------------------------------------------------------------------

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
            c, _wave, wave_id, added = prepare(tx.conn, slug, wave_name, options.ignore_window, now,
                                                 options.dry_run)
            tx.campaign_id = c.id
            tx.note(wave=wave_name, added=added, ignore_window=options.ignore_window)
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
        return SendSummary(slug, wave_name, counts, dry_run=True, preview=preview)
    db_seconds = time.perf_counter() - start
    job = _Job(config, c.id, slug, wave_name, wave_id, options)

    attempted, gate_seconds = 0, 0.0
    if options.workers <= 1:
        worker = Worker(engine, job, transport=transport, progress=progress, progress_every=progress_every)
        worker.run_to_end()
        attempted, gate_seconds = worker.attempted, worker.gate_seconds
        db_seconds += worker.db_seconds
    else:
        engine.dispose()  # no connection of this process is carried into the workers
        with _worker_context().Pool(options.workers) as pool:
            pending = pool.map_async(_worker_process, [job] * options.workers)
            while not pending.ready():
                pending.wait(progress_every)  # returns as soon as the workers are done
                if progress is not None and not pending.ready():
                    # A lost database: the workers retry on their own; the progress shows again when it is back.
                    with contextlib.suppress(DatabaseLost):
                        progress(call(engine, deliveries.counts, wave_id, write=False, retry_for=0))
            for n, secs, gate in pending.get():
                attempted += n
                db_seconds += secs / options.workers  # the workers' database waits overlap
                gate_seconds += gate / options.workers
    end = time.perf_counter()
    counts, look, paused = call(engine, _finish, c.id, wave_id, wave_name, config.actor, options.ignore_window,
                                attempted)
    db_seconds += time.perf_counter() - end
    if progress is not None:
        progress(counts)
    return SendSummary(slug, wave_name, counts, attempted=attempted, elapsed=time.perf_counter() - start,
                       db_seconds=db_seconds, gate_seconds=gate_seconds, waiting_window=look.waiting_window,
                       paused=paused)


def _finish(conn: Connection, campaign_id: int, wave_id: int, wave_name: str, actor: str, ignore_window: bool,
            attempted: int) -> tuple[dict[str, int], deliveries.Outlook, str | None]:
    """The wave's counts at the end; the wave is done when nothing is left to send (not even later)."""
    now = db.utcnow()
    counts = deliveries.counts(conn, wave_id)
    look = deliveries.outlook(conn, wave_id, now, ignore_window)
    row = campaign_rows.wave(conn, campaign_id, wave_name)
    assert row is not None
    paused = row.paused_reason if row.state == campaign_rows.PAUSED else None
    if not paused and not look.waiting_window and not counts["pending"] and not counts["sending"]:
        campaign_rows.wave_done(conn, wave_id, now)
    audit.record(conn, actor, "wave.sent", campaign_id, wave=wave_name, counts=counts, attempted=attempted)
    return counts, look, paused
