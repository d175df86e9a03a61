"""Delivering the webhook outbox (issue 25 item 2): each configured endpoint gets the events it wants, in the order
they were written, at least once, signed per the Standard Webhooks specification (or as a Slack text message).

One run (`deliver`) goes over every endpoint: it opens a delivery for each recent event the endpoint wants, then
posts its deliveries oldest first. A 2xx answer delivers; anything else (another status, a refused or dropped
connection, no whole answer within `timeout_seconds`) is retried later with exponential backoff (`Pace`), and
the endpoint's later events wait behind it, so a receiver sees them in order. After `max_attempts`, or once the
event is older than the maximum age, the delivery is `failed` (shown by `campaign webhooks log`) and the next
goes. One run at a time holds the `webhooks` lease, so two schedulers (or a scheduler and `webhooks send`) never
post the same delivery at once; a run killed mid-request posts that event again next time (at least once: the
receiver tells a repeat by its `webhook-id`).

The scheduler starts a run each tick in a thread of its own (`Background`): a slow receiver never holds up a wave
or the flip. Every text a receiver sends back is redacted before it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from standardwebhooks.webhooks import Webhook

from campaign import db, deadlines, redaction, webhook_events
from campaign.config import Config
from campaign.errors import CampaignError, ConfigError
from campaign.results import Fields
from campaign.store import steps
from campaign.store import webhooks as store
from campaign.webhook_config import Endpoint, secret

log = logging.getLogger("campaign.scheduler")

LEASE = "webhooks"
READ_CAP = 4096  # bytes of a receiver's answer read (its first SHOWN characters are kept, redacted)
SHOWN = 300


@dataclass(frozen=True)
class Pace:
    """When to try a delivery again: `base × 2^(n−1)` seconds after the n-th failed attempt, capped at `cap`,
    varied by ±`jitter` (an event older than the endpoint's `max_age` is given up). `lease`: how long a run holds
    the lease between two requests (renewed before each)."""

    base: float = 30.0
    cap: float = 3600.0
    jitter: float = 0.1
    lease: float = 120.0

    def delay(self, failed: int, rnd: random.Random | None = None) -> dt.timedelta:
        wait = min(self.cap, self.base * 2 ** (failed - 1))
        return dt.timedelta(seconds=max(0.0, wait * (1 + (rnd or random).uniform(-self.jitter, self.jitter))))


PACE = Pace()


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the HTTP status if an answer came, and what went wrong if it did not deliver."""

    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


class Poster(Protocol):
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer: ...

    def close(self) -> None: ...


class HttpPoster:
    """POSTs with httpx: TLS verified (the system's authorities; a private one goes in SSL_CERT_FILE), no proxy
    from the environment, redirects not followed (the URL is the endpoint), one deadline over the whole request,
    at most `READ_CAP` bytes of the answer read."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        transport = httpx.HTTPTransport(verify=ssl.create_default_context(), trust_env=False)
        self._deadline = deadlines.bound(transport)
        self._client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                                    timeout=httpx.Timeout(timeout))

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        self._deadline.at = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                code = response.status_code
                if 200 <= code < 300:
                    return Answer(code)
                text, _whole = deadlines.read_capped(response, READ_CAP)
                said = redaction.redact(f"HTTP {code} {response.reason_phrase}: "
                                        f"{text.decode('utf-8', 'replace')}".rstrip(": "), SHOWN)
                if 300 <= code < 400:
                    said += " (redirects are not followed: set url to where it points)"
                return Answer(code, said)
        except httpx.TimeoutException as exc:
            return Answer(None, f"no whole answer within timeout_seconds = {self.timeout:g} ({type(exc).__name__})")
        except httpx.TransportError as exc:  # refused, reset, dropped, TLS
            return Answer(None, f"connection failed: {redaction.redact(exc, SHOWN) or type(exc).__name__}")
        finally:
            self._deadline.at = None

    def close(self) -> None:
        self._client.close()


def request(e: Endpoint, key: bytes | None, due: store.Due, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery: the stored body, signed (`webhook-id`, `webhook-timestamp`,
    `webhook-signature: v1,…`); or, for Slack, the event in words as `{"text": …}`, unsigned. The timestamp is
    the real clock's (a receiver compares it with its own), also when the campaign clock is simulated."""
    headers = {"Content-Type": "application/json", "User-Agent": "campaign-webhooks"}
    if e.format == "slack":
        payload = json.loads(due.payload)
        text = webhook_events.words(payload["type"], payload.get("data", {}))
        return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8"), headers
    assert key is not None
    body = due.payload.encode("utf-8")
    signature = Webhook(key).sign(due.msg_id, dt.datetime.fromtimestamp(timestamp, dt.UTC), body)
    return body, {**headers, "webhook-id": due.msg_id, "webhook-timestamp": str(timestamp),
                  "webhook-signature": signature}


@dataclass
class Run(Fields):
    """What one delivery run did."""

    endpoints: int = 0
    opened: int = 0  # deliveries opened for new events
    delivered: int = 0
    retrying: int = 0  # failed this time, tried again later
    failed: int = 0  # given up (attempts, or older than the maximum age)
    waiting: int = 0  # endpoints whose next delivery waits for its retry time
    busy: str | None = None  # another run holds the lease: nothing was done
    problems: list[str] = field(default_factory=list)  # endpoints skipped (a secret missing or malformed)

    @property
    def did_something(self) -> bool:
        return bool(self.opened or self.delivered or self.retrying or self.failed or self.problems)

    def line(self) -> str:
        if self.busy:
            return f"another delivery run is under way ({self.busy}); nothing was done"
        return (f"{self.endpoints} endpoint(s): {self.delivered} delivered, {self.retrying} to retry, "
                f"{self.failed} given up" + (f", {self.waiting} waiting for a retry time" if self.waiting else ""))


def deliver(engine: Engine, endpoints: Sequence[Endpoint], *, now_too: bool = False, pace: Pace = PACE,
            poster: Callable[[float], Poster] = HttpPoster, stop: threading.Event | None = None) -> Run:
    """One run over every endpoint (see the module's docstring). `now_too`: a delivery waiting for its retry time
    is tried now (`webhooks send --now`). `stop`: set by the scheduler when it stops; checked between requests."""
    run = Run(endpoints=len(endpoints))
    if not endpoints:
        return run
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lease = dt.timedelta(seconds=pace.lease)
    with db.write(engine) as conn:
        if not steps.take_lease(conn, LEASE, holder, db.utcnow(), lease):
            run.busy = steps.lease_holder(conn, LEASE, db.utcnow()) or "unknown"
            return run
    try:
        for e in endpoints:
            if stop is not None and stop.is_set():
                break
            try:
                key = secret(e) if e.format == "standard" else None
            except ConfigError as exc:
                run.problems.append(str(exc))
                continue
            now = db.utcnow()
            with db.write(engine) as conn:
                run.opened += store.open_for(conn, e.name, e.types(), now - e.max_age, now)
                run.failed += store.give_up_older(conn, e.name, now - e.max_age, now)
            sender = poster(e.timeout_seconds)
            try:
                if not _endpoint(engine, e, key, sender, run, now_too, pace, holder, stop):
                    break  # the lease was lost: another run goes on
            finally:
                sender.close()
    finally:
        with contextlib.suppress(DBAPIError), db.write(engine) as conn:
            steps.drop_lease(conn, LEASE, holder)
    return run


def _endpoint(engine: Engine, e: Endpoint, key: bytes | None, sender: Poster, run: Run, now_too: bool, pace: Pace,
              holder: str, stop: threading.Event | None) -> bool:
    """The endpoint's deliveries, oldest first, until one fails (the later ones wait behind it) or none is left.
    False when the lease was lost."""
    while stop is None or not stop.is_set():
        now = db.utcnow()
        with db.write(engine) as conn:
            if not steps.take_lease(conn, LEASE, holder, now, dt.timedelta(seconds=pace.lease)):
                run.busy = steps.lease_holder(conn, LEASE, now) or "unknown"
                return False
            due = store.head(conn, e.name)
        if due is None:
            return True
        if due.next_attempt_at is not None and due.next_attempt_at > now and not now_too:
            run.waiting += 1
            return True
        body, headers = request(e, key, due, int(time.time()))
        answer = sender.post(e.url, body, headers)
        attempts, now = due.attempts + 1, db.utcnow()
        with db.write(engine) as conn:
            if answer.delivered:
                store.settle(conn, due.id, store.DELIVERED, attempts, now, status=answer.status)
                run.delivered += 1
                continue
            if attempts >= e.max_attempts:
                store.settle(conn, due.id, store.FAILED, attempts, now, status=answer.status,
                             error=f"{answer.error} (given up after {attempts} attempt(s))")
                run.failed += 1
                continue
            store.settle(conn, due.id, store.PENDING, attempts, now, status=answer.status, error=answer.error,
                         next_at=now + pace.delay(attempts))
            run.retrying += 1
        return True
    return True


def deliver_now(engine: Engine, config: Config, now_too: bool = False) -> Run:
    """`campaign webhooks send`: one run over the endpoints of campaign.toml; refused when there are none."""
    if not config.webhooks:
        raise ConfigError("no [[webhooks]] in campaign.toml: nothing to deliver to (docs/webhooks.md)")
    return deliver(engine, config.webhooks, now_too=now_too)


class Background:
    """The scheduler's webhook job: at each tick, a delivery run in a thread of its own, which the tick does not
    wait for (a receiver that hangs holds up no wave and no flip); at most one at a time."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine, self.endpoints = engine, config.webhooks
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.endpoints and (self._task is None or self._task.done()) and not self._stop.is_set():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            run = await asyncio.to_thread(deliver, self.engine, self.endpoints, stop=self._stop)
        except (CampaignError, DBAPIError) as exc:
            log.warning("webhooks: %s", redaction.redact(exc))
            return
        for problem in run.problems:
            log.error("webhooks: %s", problem)
        if run.did_something:
            log.info("webhooks: %s", run.line())

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        """The run under way, if any, to its end (each request has its deadline)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
