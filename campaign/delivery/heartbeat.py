"""A worker among the others: who it is (`worker_id`, and `machine`, read from /proc), its heartbeat row in the
worker table (leases renewed, dead workers' deliveries given back), and its share of the campaign's rate.

The campaign's rate is shared: each live worker (a heartbeat within `Timings.stale`) sends at
`rate_per_second / live workers`, recounted between heartbeats (see `campaign.policies`).
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
from campaign.policies import RateLimiter, share
from campaign.store import deliveries
from campaign.store import workers as worker_rows

__all__ = ["Heartbeat", "alive", "machine", "worker_id"]


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

    def live(self, rows: list[worker_rows.WorkerRow], now: dt.datetime, dead: set[str] | None = None) -> int:
        """How many of the campaign's workers are live: a heartbeat within `Timings.stale`, not known dead."""
        return sum(1 for w in rows if w.heartbeat_at >= now - self.timings.stale and not (dead and w.id in dead))

    # database transactions (each runs in a database thread)

    def beat_tx(self, conn: Connection, in_flight: list[int], now: dt.datetime) -> int:
        job = self.job
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

    def live_tx(self, conn: Connection, now: dt.datetime) -> int:
        return self.live(worker_rows.of_campaign(conn, self.job.campaign_id), now)

    def leave_tx(self, conn: Connection) -> None:
        worker_rows.remove(conn, [self.id])

    # beside the send loop

    async def beat(self) -> None:
        self._take_share(await self.db.write(self.beat_tx, sorted(self.in_flight), db.utcnow()))

    def _take_share(self, live: int) -> None:
        self.limiter.set_rate(share(self.rate, max(1, live)))

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
