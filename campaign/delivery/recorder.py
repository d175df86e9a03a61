"""A worker's recorder: the outcomes of its sends, group-committed while the connections go on sending.

At most `concurrency` messages the server accepted wait to be recorded at any time: a connection that would
exceed that waits just before its data goes (the transport's gate, `admit`), so a crash resends at most
`concurrency` messages per worker, with the same Message-ID (G2). A message's commit is hidden behind the next
message's MAIL, RCPT and DATA. Outcomes alone need no transaction: each row is written only while its lease
holds; a bounce and its suppression are written together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy import Connection

from campaign.connection import Database
from campaign.delivery.job import Job
from campaign.delivery.waits import Waits
from campaign.intake import suppressions
from campaign.store import deliveries
from campaign.store.deliveries import Result

__all__ = ["COMMIT_GATHER", "COMMIT_LANES", "Recorder"]

COMMIT_GATHER = 0.010  # seconds a commit may wait for company: fewer, larger transactions (see `committer`)
# Transactions of outcomes written at once, each by a thread and a connection of its own. On PostgreSQL a commit
# waits for its WAL to reach the disk (fsync): while one waits, the next is written, and the server flushes
# both at once. SQLite has one writer at a time: a second would only wait for the lock.
COMMIT_LANES = {"postgresql": 2}


class Recorder:
    """Writes one worker's outcomes (`commit`), a transaction of all that is queued at a time, in each of its
    lanes (`committer`); keeps each commit's future until the worker waits for it (`take`)."""

    def __init__(self, database: Database, job: Job, owner: str, lanes: int, concurrency: int, waits: Waits,
                 in_flight: set[int]) -> None:
        self.db, self.job, self.owner = database, job, owner
        self.lanes = lanes  # committers, each with a lane of `database` ("commit0", …; see COMMIT_LANES)
        self.concurrency = concurrency
        self.waits = waits
        self.in_flight = in_flight  # claimed, not yet recorded: each leaves it once its outcome is written
        self.gone: BaseException | None = None  # the database gone for good: nothing more is recorded
        # Group commit: at most `concurrency` messages the server accepted wait to be recorded (the gate,
        # `admit`), so a crash resends at most that many (G2); the connections go on meanwhile.
        self._unrecorded = asyncio.Semaphore(concurrency)
        self._queue: list[tuple[list[Result], list[tuple[str, str]], asyncio.Future[None]]] = []
        self._queued = asyncio.Event()
        self._urgent = asyncio.Event()  # set when many queued outcomes hold a gate permit: commit now
        self._gated = 0
        self._taking = asyncio.Lock()  # the committer gathering the next transaction
        self._kept: list[asyncio.Future[None]] = []  # commits nobody waits for yet (see `take`)

    def record_tx(self, conn: Connection, results: list[Result], bounces: list[tuple[str, str]]) -> None:
        deliveries.record(conn, self.owner, results)
        for address, reason in bounces:
            suppressions.add(conn, address, f"bounced: {reason}", f"campaign:{self.job.slug}", source="bounce",
                             campaign_id=self.job.campaign_id)

    async def admit(self) -> None:
        """The gate's wait: until fewer than `concurrency` accepted messages wait to be recorded. The caller
        holds a permit once this returns, given back by `commit(…, gated=True)`'s commit or by `release`."""
        if self._unrecorded.locked():
            start = time.perf_counter()
            self.waits.on_db += 1
            try:
                await self._unrecorded.acquire()
            finally:
                self.waits.on_db -= 1
                self.waits.commits += time.perf_counter() - start
        else:
            await self._unrecorded.acquire()

    def release(self) -> None:
        """Give back a permit of `admit` whose message was not sent."""
        self._unrecorded.release()

    async def committer(self, lane: str) -> None:
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
                    await self.db.write(self.record_tx, results, bounces, lane=lane)
                elif self.db.on_loop:
                    await self.db.alone(lane, deliveries.record_statement(self.db.engine.dialect, self.owner,
                                                                          results))
                else:
                    await self.db.write(self.record_tx, results, bounces, lane=lane, alone=True)
            except BaseException as exc:  # the database is gone for good (after `call`'s retries), or a bug
                self.gone = exc
                for _, _, fut in [*batch, *self._queue]:
                    if not fut.done():
                        fut.set_exception(exc)
                self._queue = []
                for _ in range(self.concurrency):  # wake the sends waiting at the gate: they stop unsent
                    self._unrecorded.release()
                raise
            self.in_flight.difference_update(r.id for r in results)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def commit(self, results: list[Result], bounces: list[tuple[str, str]] | None = None,
               gated: bool = False) -> asyncio.Future[None]:
        """Queue outcomes for the next transaction; the future is done when they are written. `gated`: their
        message holds a permit of `admit`, given back then."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.gone is not None:
            done.set_exception(self.gone)
        else:
            self._queue.append((results, bounces or [], done))
            self._queued.set()
            if gated:
                self._gated += 1
                if self._gated * 2 >= self.concurrency:
                    self._urgent.set()
        if gated:
            done.add_done_callback(lambda _: self._unrecorded.release())
        self._keep(done)
        return done

    def _keep(self, done: asyncio.Future[None]) -> None:
        """Keep a commit's future until `take` hands it over (those that ended well need not be kept)."""
        if len(self._kept) >= 1024:
            self._kept = [f for f in self._kept if not f.done() or f.cancelled() or f.exception()]
        self._kept.append(done)

    def take(self) -> list[asyncio.Future[None]]:
        """The commits kept so far, for the worker to wait for; kept no longer."""
        kept, self._kept = self._kept, []
        return kept

    def settle(self) -> None:
        """Mark the kept commits that failed (with the database) as seen: the send reports why."""
        for done in self._kept:
            if done.done() and not done.cancelled():
                done.exception()
