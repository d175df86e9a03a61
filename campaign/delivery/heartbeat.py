"""A worker among the others: who it is (`worker_id`, and `machine`, read from /proc), its heartbeat row in the
worker table (leases renewed, dead workers' deliveries given back), and its share of the campaign's rate.

The campaign's rate is shared by demand: each live worker with something to send (a heartbeat within
`Timings.stale`) sends at `rate_per_second / such workers`, recounted between heartbeats (see
`campaign.policies`). A worker with nothing left of its own to send while others finish theirs *rests*: it leaves
the worker table, so the others take its share at their next count (an idle worker holding a share left half of
a 100/s rate unused with two processes of two workers each). Joining or waking, a worker first waits until every
other has counted it (`Timings.recount` and a margin) before it sends: the campaign's rate is never exceeded
while the shares change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import socket
import time
import uuid
from pathlib import Path

from sqlalchemy import Connection

from campaign import db
from campaign.connection import Database
from campaign.delivery.job import Job
from campaign.policies import RateLimiter, burst_of, share
from campaign.store import deliveries
from campaign.store import workers as worker_rows

__all__ = ["JOIN_MARGIN", "Heartbeat", "alive", "machine", "worker_id"]

JOIN_MARGIN = 0.5  # seconds beyond `Timings.recount` a joining worker waits for the others' counts
# A rate above this is no limit any worker of ours comes near (one sends a few thousand messages a second): joining
# is not held up for it.
UNBOUND_RATE = 10_000.0


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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """One worker's row in the worker table, its leases kept, and its rate share (`limiter`) kept current."""

    def __init__(self, database: Database, job: Job, worker: str, limiter: RateLimiter, in_flight: set[int],
                 rate: float) -> None:
        self.db, self.job, self.id = database, job, worker
        self.host = machine()
        self.timings = job.options.timings
        self.limiter, self.rate = limiter, rate
        self.in_flight = in_flight  # claimed, not yet recorded: their leases are renewed
        self.resting = False  # out of the worker table, holding no share: nothing of its own to send

    def live(self, rows: list[worker_rows.WorkerRow], now: dt.datetime, dead: set[str] | None = None) -> int:
        """How many of the campaign's workers are live: a heartbeat within `Timings.stale`, not known dead."""
        return sum(1 for w in rows if w.heartbeat_at >= now - self.timings.stale and not (dead and w.id in dead))

    # database transactions (each runs in a database thread)

    def beat_tx(self, conn: Connection, in_flight: list[int], now: dt.datetime) -> int:
        job = self.job
        if self.resting:  # still looks for the dead and renews what it holds, but holds no share
            worker_rows.remove(conn, [self.id])
        else:
            worker_rows.beat(conn, self.id, self.host, os.getpid(), job.campaign_id, job.wave_id, now)
        rows = worker_rows.of_campaign(conn, job.campaign_id)
        # Dead: a worker of this process table whose pid is gone; any worker silent for `forget_after` (its
        # leases ran out long ago: it is forgotten, wherever it ran).
        dead = [w.id for w in rows if w.id != self.id and (w.heartbeat_at < now - self.timings.forget_after
                                                           or (w.host == self.host and not alive(w.pid)))]
        worker_rows.remove(conn, dead)
        deliveries.reclaim(conn, job.wave_id, now, dead)
        deliveries.renew(conn, self.id, in_flight, now, lease=self.timings.lease)
        return self.live(rows, now, set(dead))

    def join_tx(self, conn: Connection, in_flight: list[int], now: dt.datetime) -> int:
        worker_rows.joining(conn, self.job.campaign_id)
        return self.beat_tx(conn, in_flight, now)

    def live_tx(self, conn: Connection, now: dt.datetime) -> int:
        return self.live(worker_rows.of_campaign(conn, self.job.campaign_id), now)

    def leave_tx(self, conn: Connection) -> None:
        worker_rows.remove(conn, [self.id])

    # beside the send loop

    async def beat(self) -> None:
        self._take_share(await self.db.write(self.beat_tx, sorted(self.in_flight), db.utcnow()))

    def _take_share(self, live: int) -> None:
        if not self.resting:
            mine = share(self.rate, max(1, live))
            self.limiter.set_rate(mine, burst_of(mine))

    async def join(self) -> None:
        """Into the worker table, then — when others are sending — wait until each of them has counted this one
        and lowered its share, before this one sends at its own."""
        self.resting = False
        live = await self.db.write(self.join_tx, sorted(self.in_flight), db.utcnow())
        if live > 1 and self.rate <= UNBOUND_RATE:
            await asyncio.sleep(self.timings.recount + JOIN_MARGIN)
            live = await self.db.read(self.live_tx, db.utcnow())
        self._take_share(live)

    async def rest(self) -> None:
        """Nothing of its own left to send (others' messages still under way, retries not yet due): out of the
        worker table, so that the others take its share of the rate. `join` brings it back."""
        if not self.resting:
            self.resting = True
            await self.db.write(self.leave_tx)

    async def run(self) -> None:
        # Also during a long batch (a slow relay, a low rate): the leases of what is in flight must not
        # run out, or another worker would take those deliveries and send them again. Between beats, the
        # live workers are counted (a read, no write lock) so that the rate share follows a worker joining.
        every, recount = self.timings.heartbeat, self.timings.recount
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(recount, every))
            if time.monotonic() - last >= every:
                last = time.monotonic()
                await self.beat()
            else:
                self._take_share(await self.db.read(self.live_tx, db.utcnow()))

    async def leave(self) -> None:
        await self.db.write(self.leave_tx, retry_for=5.0)
