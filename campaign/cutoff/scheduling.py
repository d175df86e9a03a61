"""Scheduling: `campaign schedule` registers a campaign's steps (each wave, the flip); `campaign scheduler run`
performs them when due — once each, even after downtime and with several schedulers running.

APScheduler (3.x, AsyncIOScheduler) is only the alarm clock. The truth is the `step` table: a step is claimed
(`pending` → `running`, one row, one winner) before it runs, and finished after. One scheduler at a time leads
(a PostgreSQL advisory lock, or a lease row on SQLite); the others wait and take over within a minute when the
leader dies. At start the leader reconciles: it hands back steps left `running` by a dead leader and runs
every overdue step — an `affected` wave past its expiry (the cutoff, by default) expires instead of going out.

Each step runs as a `campaign` subprocess (`send`, `flip`): the scheduler stays responsive, memory stays flat,
and what a killed step leaves behind is what a killed `send` or `flip` leaves, which both resume from.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from campaign import campaigns, connection, db, errors, preflight
from campaign.config import ENV, Config
from campaign.cutoff.planning import FLIP, Timeline, schedule, wave_step
from campaign.errors import StateError
from campaign.redaction import redact
from campaign.store import steps
from campaign.webhooks.delivery import Background as Webhooks

__all__ = ["FLIP", "Scheduler", "Timeline", "Timings", "run", "schedule", "wave_step"]  # `campaign schedule` lives
# in planning.py; its names stay importable from here

log = logging.getLogger("campaign.scheduler")

LEADER = "scheduler"
ADVISORY_KEY = 0x63616D70  # "camp": the advisory lock of the leading scheduler on PostgreSQL
LEASE_SECONDS = 45.0  # a dead leader is replaced within a minute
TICK_SECONDS = 15.0  # how often the leader looks for work beyond its alarms (send windows, retries, fair notice)
RETRY_STEP_SECONDS = 60.0  # a step that failed for a passing reason is tried again after this
BOUNCES_EVERY = 300.0  # seconds between two fetches of returned mail (`scheduler run --bounces URL`)
PREFLIGHT_EVERY = 60.0  # the preflight of each scheduled campaign: when the scheduler starts, then at a poll this apart


@dataclass(frozen=True)
class Timings:
    """How the scheduler paces itself, in seconds: values passed in, with the production defaults (the command
    line's options set some; a test takes over with a short lease rather than wait out 45 s)."""

    tick: float = TICK_SECONDS  # the leader's look for work; a standby looks for the lead as often (at most 10 s)
    lease: float = LEASE_SECONDS  # the lead's lease, renewed every third of it; a dead leader's runs out within it
    retry_step: float = RETRY_STEP_SECONDS
    bounces_every: float = BOUNCES_EVERY
    preflight_every: float = PREFLIGHT_EVERY


TIMINGS = Timings()


class LogFormat(logging.Formatter):
    """One line per event, stamped with the campaign clock (simulated in the demo), in UTC; our secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{db.utcnow().isoformat(timespec='seconds')} {redact(record.getMessage(), None)}"


# -- leadership ------------------------------------------------------------------------------------------

class Leadership:
    """Who leads: a lease row (both databases; renewed every third of the lease) and, on PostgreSQL, a session
    advisory lock held on a connection of its own, which the server releases the moment the leader's process dies."""

    def __init__(self, engine: Engine, holder: str, lease: dt.timedelta = dt.timedelta(seconds=LEASE_SECONDS)) -> None:
        self.engine, self.holder, self.lease = engine, holder, lease
        self._lock_conn: Connection | None = None

    def try_lead(self, now: dt.datetime) -> bool:
        if self._lock_conn is not None and not self._lock_alive():
            log.warning("the connection holding the scheduler lock was lost; taking the lock again")
            self._drop_lock()
        if self.engine.dialect.name == "postgresql" and self._lock_conn is None:
            conn = self.engine.connect()
            try:
                got = steps.try_advisory_lock(conn, ADVISORY_KEY)
                conn.commit()
            except Exception:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._lock_conn = conn
        with db.write(self.engine) as conn:
            # The lease row decides too: a restarted PostgreSQL server frees the advisory lock of a leader that is
            # alive and may be running a step, so the lock alone would make a second leader. A standby holds the
            # lock only while it leads, so that a leader whose connection was cut can take it back.
            led = steps.take_lease(conn, LEADER, self.holder, now, self.lease)
        if not led:
            self._unlock()
        return led

    def _unlock(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                steps.advisory_unlock(self._lock_conn, ADVISORY_KEY)
                self._lock_conn.commit()
                self._lock_conn.close()
            self._drop_lock()

    def _lock_alive(self) -> bool:
        assert self._lock_conn is not None
        return steps.alive(self._lock_conn)

    def _drop_lock(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.invalidate()
            self._lock_conn = None

    def holder_now(self, now: dt.datetime) -> str | None:
        with db.read(self.engine) as conn:
            return steps.lease_holder(conn, LEADER, now)

    def release(self) -> None:
        with contextlib.suppress(Exception), db.write(self.engine) as conn:
            steps.drop_lease(conn, LEADER, self.holder)
        self._unlock()


# -- the scheduler -----------------------------------------------------------------------------------------

Runner = Callable[[list[str]], "asyncio.Future[tuple[int, str, str]]"]


class Scheduler:
    """`campaign scheduler run`: lead, reconcile, then perform each step when it comes due."""

    def __init__(self, engine: Engine, config: Config, workers: int = 1, bounces: str | None = None,
                 timings: Timings = TIMINGS) -> None:
        self.engine, self.config, self.workers, self.timings = engine, config, workers, timings
        self.bounces, self._bounces_at = bounces, -float("inf")
        self._preflight_at = -float("inf")
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leadership = Leadership(engine, self.id, dt.timedelta(seconds=timings.lease))
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._child: asyncio.subprocess.Process | None = None
        self._leading = False
        self.webhooks = Webhooks(engine, config)  # a delivery run each tick, beside the steps, never waited for
        self.performed: list[str] = []  # steps run
        self.also: list[str] = []  # catching up besides steps: deliveries due again, fair notice that ran

    # steps

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ENV.values()}
        for key, var in ENV.items():
            value = getattr(self.config, key)
            if value is not None:
                env[var] = str(value)
        env[ENV["actor"]] = "scheduler"
        if os.environ.get(db.CLOCK_ENV):  # a simulated clock carries on in the child from where it is now
            env[db.CLOCK_ENV] = db.utcnow().isoformat()
        return env

    async def _campaign(self, *args: str) -> tuple[int, str, str]:
        """Run one `campaign` command as a child process; returns (exit code, stdout, stderr).

        The child leads a process group of its own, so that stopping it stops whatever it started too, and its
        output goes to files, not pipes: a grandchild that outlived it cannot keep the scheduler waiting."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "campaign", *args, env=self._env(), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True)
            self._child = proc
            try:
                await proc.wait()
            finally:
                self._child = None
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)  # stragglers of the step's process group
            out.seek(0)
            err.seek(0)
            return proc.returncode or 0, out.read().decode(errors="replace"), err.read().decode(errors="replace")

    async def _run_step(self, step: steps.StepRow) -> None:
        now = db.utcnow()
        with db.write(self.engine) as conn:
            if not steps.claim(conn, step.id, self.id, now):
                return  # someone else took it
        log.info("%s: %s due %s: starting", step.slug, step.name, step.due_at.isoformat())
        state, error, retry = steps.DONE, None, False
        try:
            if step.name.startswith("wave:"):
                state, error, retry = await self._wave(step, step.name.removeprefix("wave:"))
            elif step.name == FLIP or step.name.startswith(f"{FLIP}:"):  # `flip:N`: stage N of a staged flip
                stage = ("--stage", step.name.partition(":")[2]) if ":" in step.name else ()
                code, out, err = await self._campaign("flip", step.slug, *stage, "--json")
                if code != 0:
                    outcome, error = _outcome(out, err)
                    # Rolled back or cancelled meanwhile: final, not a passing failure to try again; nor halted
                    # by a guard of its stages (failed until `campaign resume` makes it pending again).
                    final = outcome in (errors.ROLLED_BACK, errors.CANCELLED)
                    state, retry = (steps.CANCELLED if final else steps.FAILED), not final and \
                        outcome != errors.FLIP_HALTED
            else:
                state, error = steps.FAILED, f"unknown step {step.name!r}"
        except asyncio.CancelledError:
            with db.write(self.engine) as conn:
                steps.hand_back(conn, self.id)
            raise
        def settle(conn: Connection) -> None:
            if retry and not self._stop.is_set() and self._leading:
                steps.hand_back(conn, self.id)
                again = db.utcnow() + dt.timedelta(seconds=self.timings.retry_step)
                steps.register(conn, step.campaign_id, [(step.name, again)])
            elif retry:
                steps.hand_back(conn, self.id)
            else:
                steps.finish(conn, step.id, self.id, state, db.utcnow(), error)
        await self._settle(settle)
        self.performed.append(f"{step.slug}:{step.name}")
        log.info("%s: %s %s%s", step.slug, step.name, "retried later" if retry else state,
                 f": {error}" if error else "")

    async def _settle(self, write: Callable[[Connection], None]) -> None:
        """A step's last write, tried again while the database is away (for as long as the lead lasts): without it
        the step would stay `running` until another leader hands it back and runs it again."""
        backoff = connection.Backoff(self.timings.lease, "the scheduler stopped; start it again once the "
                                     "database is back: the step is handed back and runs again")
        while True:
            try:
                with db.write(self.engine) as conn:
                    write(conn)
                return
            except DBAPIError as exc:
                if not connection.lost(exc, self.engine.dialect.name):
                    raise
                await asyncio.sleep(backoff.next(exc))

    async def _wave(self, step: steps.StepRow, wave: str) -> tuple[str, str | None, bool]:
        code, out, err = await self._campaign("send", step.slug, "--wave", wave, "--workers", str(self.workers),
                                              "--json")
        if code == 0:
            return steps.DONE, None, False
        summary = _json_or_none(out)
        if summary is not None and summary.get("paused"):
            # The wave paused itself (a broken relay, a template error): a person resumes it; the tick goes on.
            return steps.DONE, f"paused: {summary['paused']}", False
        outcome, message = _outcome(out, err)
        if outcome == errors.EXPIRED:
            return steps.EXPIRED, message, False
        if outcome in (errors.PAUSED, errors.CANCELLED):
            return steps.DONE, message, False
        return steps.FAILED, message, True

    # the loop

    async def _tick(self) -> None:
        """Everything that is due now: overdue steps first, then waves with deliveries due again (a send window
        that opened, a retry), then devices whose fair notice has run."""
        self.webhooks.start()
        if self.bounces and time.monotonic() - self._bounces_at >= self.timings.bounces_every:
            # First, so that a notice returned meanwhile no longer counts when a flip decides below.
            self._bounces_at = time.monotonic()
            code, out, err = await self._campaign("bounces", "fetch", self.bounces)
            log.info("bounces: %s", _last_line(out) if code == 0 else _last_line(err))
        if time.monotonic() - self._preflight_at >= self.timings.preflight_every:
            self._preflight_at = time.monotonic()
            await self._preflights()
        now = db.utcnow()
        for step in [s for s in await self._db(steps.pending) if s.due_at <= now]:
            if self._stop.is_set() or not self._leading:
                return
            await self._run_step(step)
        for slug, wave in await self._db(steps.waves_with_work, db.utcnow()):
            if self._stop.is_set() or not self._leading:
                return
            log.info("%s: wave %s has deliveries due again (send window, retry): sending", slug, wave)
            self.also.append(f"{slug}:wave:{wave} (deliveries due again)")
            code, _out, err = await self._campaign("send", slug, "--wave", wave, "--workers", str(self.workers))
            if code != 0:
                log.warning("%s: wave %s: %s", slug, wave, _last_line(err))
        for slug in await self._db(steps.campaigns_with_due_changes, db.utcnow()):
            if self._stop.is_set() or not self._leading:
                return
            log.info("%s: fair notice has run for waiting devices: flipping them", slug)
            self.also.append(f"{slug}:flip (fair notice ran)")
            code, _out, err = await self._campaign("flip", slug)
            if code != 0:
                log.warning("%s: flip: %s", slug, _last_line(err))
                continue
            # Those switched now are told too: the campaign's `changed` waves that went out already and have not
            # expired take in the newly changed accounts (each account still gets a wave once).
            for wave in await self._db(steps.open_changed_waves, slug, db.utcnow()):
                log.info("%s: wave %s for the devices switched after fair notice", slug, wave)
                code, _out, err = await self._campaign("send", slug, "--wave", wave, "--workers", str(self.workers))
                if code != 0:
                    log.warning("%s: wave %s: %s", slug, wave, _last_line(err))
        for slug in await self._db(steps.finished):
            if await asyncio.to_thread(campaigns.finish, self.engine, slug, self.config.actor):
                log.info("%s: every step has run: the campaign is done", slug)

    async def _preflights(self) -> None:
        """The preflight of every campaign with steps still to run: what would fail on the day is said now, in
        the log (each time) and in `status` (an audit event when it changes)."""
        slugs = sorted({s.slug for s in await self._db(steps.pending)})
        try:
            results = await asyncio.to_thread(preflight.watch, self.engine, self.config.templates,
                                              self.config.actor, slugs)
        except errors.CampaignError as exc:
            log.error("the preflight could not run: %s", exc)
            return
        for result in results:
            for finding in result.errors:
                log.error("%s: preflight: would fail: [%s] %s", result.campaign, finding.code, finding.message)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def work() -> Any:
            with db.read(self.engine) as conn:
                return fn(conn, *args)
        return await asyncio.to_thread(work)

    def _alarms(self, scheduler: Any) -> None:
        """An APScheduler job per future step (the alarm clock; the step table stays the truth)."""
        from apscheduler.triggers.date import DateTrigger

        with db.read(self.engine) as conn:
            future = [s for s in steps.pending(conn) if s.due_at > db.utcnow()]
        # The alarm fires at the real instant the simulated clock reaches the step (CAMPAIGN_CLOCK).
        skew = db.utcnow() - dt.datetime.now(dt.UTC)
        for s in future:
            scheduler.add_job(self._wake.set, DateTrigger(run_date=s.due_at - skew, timezone=dt.UTC),
                              id=f"step:{s.id}", replace_existing=True)

    def stop(self) -> None:
        self._stop.set()
        self.webhooks.stop()
        self._wake.set()
        self._stop_child()

    def _stop_child(self) -> None:
        if self._child is not None and self._child.returncode is None:
            # The step's processes stop as a killed `send` or `flip` does; the step is handed back.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._child.pid, signal.SIGTERM)

    async def run(self, once: bool = False) -> list[str]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not on every platform, nor outside the main thread (the demo runs commands in-process there too).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            while not self._stop.is_set():
                if not await self._lead(once):
                    break
                with db.write(self.engine) as conn:
                    handed = steps.hand_back(conn)
                if handed:
                    log.info("took over %d step(s) left running by a scheduler that is gone", handed)
                keeper = asyncio.create_task(self._keep_lead())
                try:
                    if once:
                        await self._tick()
                        break
                    await self._serve(keeper)
                finally:
                    keeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keeper
        finally:
            await self.webhooks.wait()
            self.leadership.release()
        return self.performed

    async def _lead(self, once: bool) -> bool:
        while not self._stop.is_set():
            try:
                led = await asyncio.to_thread(self.leadership.try_lead, db.utcnow())
                holder = None if led else self.leadership.holder_now(db.utcnow())
            except DBAPIError as exc:
                if once or not connection.lost(exc, self.engine.dialect.name):
                    raise
                log.warning("the database is unreachable (%s); trying again", connection.why(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=min(self.timings.tick, 10.0))
                continue
            if led:
                log.info("scheduler %s leads", self.id)
                self._leading = True
                return True
            if once:
                raise StateError(f"another scheduler leads ({holder or 'unknown'}); nothing was done")
            log.info("another scheduler leads (%s); waiting to take over", holder or "unknown")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(self.timings.tick, 10.0))
        return False

    async def _keep_lead(self) -> None:
        """Renew the lead while leading — also while a long step runs; returns when it is lost."""
        every = self.timings.lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                kept = await asyncio.to_thread(self.leadership.try_lead, db.utcnow())
            except Exception as exc:  # the database is away: the lease runs on until it is back or expires
                log.warning("could not renew the lead: %s", exc)
                continue
            if not kept:
                log.warning("lost the lead to another scheduler; stopping the step in progress")
                self._leading = False
                self._stop_child()
                return

    async def _serve(self, keeper: asyncio.Task[None]) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        scheduler = AsyncIOScheduler(timezone=dt.UTC, job_defaults={
            "misfire_grace_time": None, "coalesce": True, "max_instances": 1})
        scheduler.add_job(self._wake.set, "interval", seconds=self.timings.tick, id="tick", replace_existing=True)
        scheduler.start()
        try:
            while not self._stop.is_set() and not keeper.done():
                try:
                    self._alarms(scheduler)
                    await self._tick()
                except DBAPIError as exc:
                    if not connection.lost(exc, self.engine.dialect.name):
                        raise
                    log.warning("the database is unreachable (%s); trying again at the next tick", connection.why(exc))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.timings.tick)
        finally:
            scheduler.shutdown(wait=False)


def run(engine: Engine, config: Config, once: bool = False, workers: int = 1, bounces: str | None = None,
        timings: Timings = TIMINGS) -> tuple[list[str], list[str]]:
    """`campaign scheduler run`: returns (the steps it ran, what else it caught up on). `bounces`: an IMAP URL
    whose returned mail is taken in (`campaign bounces fetch`) every `timings.bounces_every` seconds."""
    scheduler = Scheduler(engine, config, workers=workers, bounces=bounces, timings=timings)
    performed = asyncio.run(scheduler.run(once=once))
    return performed, scheduler.also




def _outcome(out: str, err: str) -> tuple[str, str]:
    """A failed child's outcome: the stable code of its `--json` error (`errors.EXPIRED`, `PAUSED`, …; "failed"
    when it printed none: it died, say) and its message. Never read from the wording of the message."""
    doc = _json_or_none(out)
    error = doc.get("error") if doc is not None else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"], str(error.get("message") or _last_line(err))
    return "failed", _last_line(err)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].removeprefix("campaign: ") if lines else "failed without a message"


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

