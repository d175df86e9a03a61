"""The worker: sends one wave from one process until nothing is left that it can send — claim, triage, compose,
send, record — over its own transport connections, at its share of the campaign's rate.

The event loop never waits on the database: every statement runs in the worker's database threads (`Database`),
which retry a lost connection with a bounded backoff. Its parts: the feed (`campaign.delivery.feed`: claims and
what triage needs), triage (pure) and the composer, the dispatch (`campaign.delivery.dispatch`: the connections,
the rate, the breaker), the recorder (`campaign.delivery.recorder`: group commit and the gate of G2), the
heartbeat (`campaign.delivery.heartbeat`: leases, dead workers, the rate share). The worker claims the next batch
while one is composed and sent, pauses the wave when a message cannot be built or too many attempts fail, and on
its way out hands back what it claimed and did not send.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from campaign import campaigns, db
from campaign.connection import Database, DatabaseLost, call
from campaign.definition import Definition
from campaign.delivery.compose import ComposeError, Composer, MessageFailed
from campaign.delivery.dispatch import Dispatcher
from campaign.delivery.feed import Batch, Feed
from campaign.delivery.heartbeat import Heartbeat, worker_id
from campaign.delivery.job import Job
from campaign.delivery.recorder import COMMIT_LANES, Recorder
from campaign.delivery.transport import Transport, make_transport
from campaign.delivery.triage import Triage, handed_back
from campaign.delivery.waits import IdleClock, Waits
from campaign.models import FAILED
from campaign.notices import kept
from campaign.policies import RateLimiter, RetryPolicy, WindowCache, burst_of
from campaign.store import audit, deliveries
from campaign.store import campaigns as campaign_rows
from campaign.store.deliveries import Result

__all__ = ["PROGRESS_EVERY", "Worker"]

IDLE_POLL_MAX = 1.0
IDLE_POLL_FIRST = 0.05  # the first look again while other workers' messages are under way (then 1.5 times longer)
PROGRESS_EVERY = 0.5  # seconds between counts for the progress, unless the caller asks less often
SWITCH_INTERVAL = 0.0005  # seconds a thread may keep the GIL while another wants it (see `Worker.run`)


class _Progress:
    """The wave's counts for a caller's progress, every `every` seconds, counted beside the loop: the loop does
    not wait for them."""

    def __init__(self, database: Database, wave_id: int, show: Callable[[dict[str, int]], None],
                 every: float) -> None:
        self.db, self.wave_id, self.show, self.every = database, wave_id, show, every
        self.last = 0.0
        self.task: asyncio.Task[None] | None = None

    def report(self) -> None:
        if time.monotonic() - self.last < self.every:
            return
        if self.task is not None:
            if not self.task.done():
                return
            self.task.result()  # a failure of the last report (a bug) surfaces here
        self.last = time.monotonic()
        self.task = asyncio.create_task(self._now())

    async def _now(self) -> None:
        try:
            counts = await self.db.read(deliveries.counts, self.wave_id)
        except DatabaseLost:
            return  # the loop finds out on its own; the progress shows again when the database is back
        self.show(counts)


class Worker:
    """Sends one wave from one process until nothing is left that it can send."""

    def __init__(self, engine: Engine, job: Job, transport: Transport | None = None,
                 progress: Callable[[dict[str, int]], None] | None = None,
                 progress_every: float = PROGRESS_EVERY) -> None:
        self.job = job
        self.id = worker_id()
        reconnect_for = job.options.timings.reconnect_for
        self.d: Definition = call(engine, campaigns.get, job.slug, write=False, retry_for=reconnect_for).definition
        self.wave = self.d.wave(job.wave)
        # The campaign version's kept templates, not the folder as it is now (`campaign.notices.kept`).
        templates = job.templates or call(engine, kept.sending, job.campaign_id, self.d, job.config.templates,
                                          write=False, retry_for=reconnect_for)
        self.compose = Composer(self.d, self.wave, templates, templates.renderer(self.d, job.config.templates))
        self.triage = Triage(self.wave.expires, None if job.options.ignore_window else WindowCache(self.d.send_window))
        limits = self.d.limits
        limiter = RateLimiter(limits.rate_per_second, burst=burst_of(limits.rate_per_second))
        self.paused: str | None = None
        self.waits = Waits()
        self._clock: IdleClock | None = None
        concurrency = limits.concurrency
        in_flight: set[int] = set()  # claimed, not yet recorded: their leases are renewed
        lanes = COMMIT_LANES.get(engine.dialect.name, 1)
        self.db = database = Database(engine, lanes, retry_for=reconnect_for)
        self.feed = Feed(database, job, self.id, self.d, self.wave, in_flight)
        self.recorder = Recorder(database, job, self.id, lanes, concurrency, self.waits, in_flight)
        self.sends = Dispatcher(transport or make_transport(job.config, concurrency=concurrency), limiter,
                                RetryPolicy.from_limits(limits), self.recorder, concurrency)
        self.heart = Heartbeat(database, job, self.id, limiter, in_flight, limits.rate_per_second)
        self._progress = _Progress(database, job.wave_id, progress, progress_every) if progress else None

    @property
    def attempted(self) -> int:
        """Messages handed to the transport (not those that would not build)."""
        return self.sends.attempted

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
        return self.waits.claims + self.waits.commits / self.recorder.concurrency

    def _pause_tx(self, conn: Connection, reason: str) -> None:
        campaign_rows.pause_wave(conn, self.job.wave_id, reason)
        audit.record(conn, f"campaign:{self.job.slug}", "wave.pause", self.job.campaign_id, wave=self.job.wave,
                     reason=reason)

    # the loop

    def run_to_end(self) -> None:
        """`run` on an event loop of its own, whose selector clocks the time the database held it up."""
        self._clock = IdleClock(self.waits)
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
        committers = [asyncio.create_task(self.recorder.committer(f"commit{i}")) for i in range(self.recorder.lanes)]
        heart: asyncio.Task[None] | None = None
        fetch: asyncio.Task[Batch] | None = None
        try:
            await self.heart.join()
            heart = asyncio.create_task(self.heart.run())
            async with self.sends.transport:
                fetch = asyncio.create_task(self.feed.fetch())
                idle = IDLE_POLL_FIRST
                while self.paused is None:
                    batch = await self.waits.waited(fetch)
                    fetch = None
                    if batch.stop:
                        self.paused = batch.stop
                        break
                    if not batch.claimed:
                        await self._drain()  # our own retries come due only once recorded
                        look = await self.waits.waited(self.feed.look())
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
                            if not self.feed.in_flight:  # nothing of ours to send: the others take our share
                                await self.heart.rest()
                            await asyncio.sleep(wait)
                            if not self.feed.in_flight:  # nothing of ours left unrecorded: lost leases come back now
                                await self.heart.beat()
                        fetch = asyncio.create_task(self.feed.fetch())
                        continue
                    idle = IDLE_POLL_FIRST
                    if self.heart.resting:  # something to send again: a share of the rate first
                        await self.heart.join()
                    # Claim the next batch while this one is composed and sent.
                    fetch = asyncio.create_task(self.feed.fetch())
                    await self._send_batch(batch)
                    if self._progress is not None:
                        self._progress.report()
                await self._drain()
        finally:
            await self._stop(committers, heart, fetch)

    async def _send_batch(self, batch: Batch) -> None:
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
                self.sends.failed(f"account {verdict.person.account_id}: {exc}")
                continue
            except ComposeError as exc:
                # G5: this message is not sent, and the wave pauses with the error for a person to fix.
                settled.append(handed_back(c, now, error=str(exc)))
                broken = f"account {verdict.person.account_id}: {exc}"
                continue
            await self.sends.start(c, composed, verdict.person.email, breathe=n % 4 == 3)
        if settled:  # what needed no SMTP: suppressed, expired, window, skipped, handed back
            self.recorder.commit(settled)
        if broken is not None:
            await self._drain()
            await self._pause(broken)
        elif self.sends.failures.tripped(self.d.limits.pause_on_failure_rate):
            failures = self.sends.failures
            await self._drain()
            await self._pause(f"{failures.failures} of the last {failures.seen} attempts failed "
                              f"(limit {self.d.limits.pause_on_failure_rate:.0%}); last error: {self.sends.last_error}")

    async def _drain(self) -> None:
        """Wait until every message under way is sent and every outcome recorded."""
        records = self.recorder.take()
        await asyncio.gather(*self.sends.under_way, *records)

    async def _pause(self, reason: str) -> None:
        await self.db.write(self._pause_tx, reason)
        self.paused = f"wave paused: {reason}"

    async def _stop(self, committers: list[asyncio.Task[None]], heart: asyncio.Task[None] | None,
                    fetch: asyncio.Task[Batch] | None) -> None:
        """Whatever ended the loop: hand back a claimed batch not yet fed, let what is under way finish
        (unless the database is gone), stop the helpers, leave the worker table."""
        try:
            if self.recorder.gone is None:
                if fetch is not None:
                    with_claims = await fetch
                    if with_claims.claimed:
                        now = db.utcnow()
                        self.recorder.commit([handed_back(c, now) for c in with_claims.claimed])
                await self._drain()
                await self.heart.leave()
        finally:
            reporting = self._progress.task if self._progress is not None else None
            tasks = [*self.sends.under_way, *committers, *(t for t in (heart, fetch, reporting) if t is not None)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.recorder.settle()  # commits that failed with the database: the send reports why
            await self.db.aclose()
