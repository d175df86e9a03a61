"""A worker's dispatch: its composed messages sent over its transport connections — at most `concurrency` at once,
at the worker's share of the rate, a few more built ahead — each outcome made a `Result` (triage's `after_send`)
and handed to the recorder, the gate of G2 passed just before the data goes. It counts the attempts and watches
their failures (the breaker that pauses the wave)."""

from __future__ import annotations

import asyncio
import random

from campaign import db
from campaign.delivery.compose import Composed
from campaign.delivery.recorder import Recorder
from campaign.delivery.transport import Transport
from campaign.delivery.triage import after_send
from campaign.models import BOUNCED
from campaign.policies import FailureTracker, RateLimiter, RetryPolicy
from campaign.store.deliveries import Claimed

__all__ = ["Dispatcher"]


class Dispatcher:
    """Sends one worker's messages (`start`) and records what became of each."""

    def __init__(self, transport: Transport, limiter: RateLimiter, retry: RetryPolicy, recorder: Recorder,
                 concurrency: int) -> None:
        self.transport, self.limiter, self.retry, self.recorder = transport, limiter, retry, recorder
        self.failures = FailureTracker(200)
        self.attempted = 0
        self.last_error = ""  # the last failure's detail, for the pause reason
        self._rng = random.Random()
        self._slots = asyncio.Semaphore(concurrency)
        self._room = asyncio.Semaphore(2 * concurrency)  # messages built ahead of the connections
        self.under_way: set[asyncio.Task[None]] = set()  # each leaves the set when done (`_sent`)
        self._error: BaseException | None = None  # the first send that raised (a database gone for good)

    def failed(self, detail: str) -> None:
        """A message that could not be built: a failed attempt, for the breaker."""
        self.failures.record(True)
        self.last_error = detail

    async def start(self, c: Claimed, composed: Composed, address: str, breathe: bool) -> None:
        """Start sending one message; returns once it is under way. `breathe`: give the loop a turn first,
        unless it waited for room anyway."""
        # Build only a little ahead of the connections: CPU and network then take turns evenly.
        full = self._room.locked()
        await self._room.acquire()  # when not full: at once, without a turn of the loop
        if not full and breathe:
            await asyncio.sleep(0)
        if self._error is not None:  # a database that stayed away stops the send here
            self._room.release()
            raise self._error
        task = asyncio.create_task(self._send(c, composed, address))
        self.under_way.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.under_way.discard(task)
        self._room.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def _send(self, c: Claimed, composed: Composed, address: str) -> None:
        held = False
        recorder = self.recorder

        async def gate() -> None:
            # Called when the server is ready for the data, just before it can accept the message: at most
            # `concurrency` accepted messages may wait to be recorded (G2: a crash resends at most that many).
            # A connection waits here only when that many commits are behind; the commit of its previous
            # message goes on meanwhile, hidden behind this one's MAIL, RCPT and DATA.
            nonlocal held
            await recorder.admit()
            held = True
            if recorder.gone is not None:
                raise recorder.gone

        async with self._slots:
            await self.limiter.acquire()
            try:
                outcome = await self.transport.send(composed.envelope, gate)
            except BaseException:
                if held:
                    recorder.release()
                raise
        self.attempted += 1
        self.failures.record(outcome.status != "sent")
        if outcome.status != "sent":
            self.last_error = outcome.detail
        result = after_send(c, outcome, composed.envelope.message_id, composed.locale, self.retry, self._rng,
                            db.utcnow(), composed.proof)
        bounces = [(address, result.error or "")] if result.state == BOUNCED else []
        recorder.commit([result], bounces, gated=held)
