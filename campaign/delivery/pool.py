"""Worker processes: a wave sent by N processes at once, each a `Worker` with its own connections, started by
forking this one when that is safe (else spawned afresh), while this one shows the wave's progress."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from campaign import db
from campaign.connection import DatabaseLost, call
from campaign.delivery.job import Job
from campaign.delivery.worker import Worker
from campaign.store import deliveries

__all__ = ["run_processes"]


def _worker_context() -> Any:
    """How worker processes start: forked from this one when it can be done safely (Linux, and no other
    thread that could hold a lock at the fork), so they need not import everything again (a second of CPU
    each); otherwise spawned afresh."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_process(job: Job) -> tuple[int, float, float]:
    engine = db.make_engine(job.config.database_url)
    try:
        worker = Worker(engine, job)
        worker.run_to_end()
        return worker.attempted, worker.db_seconds, worker.gate_seconds
    finally:
        engine.dispose()


def run_processes(engine: Engine, job: Job, progress: Callable[[dict[str, int]], None] | None,
                  progress_every: float) -> tuple[int, float, float]:
    """Run `job.options.workers` worker processes to the end; `progress` gets the wave's counts every
    `progress_every` seconds meanwhile. Returns the attempts, and the database's and the gate's seconds
    (each the workers' mean: their waits overlap)."""
    workers = job.options.workers
    attempted, db_seconds, gate_seconds = 0, 0.0, 0.0
    engine.dispose()  # no connection of this process is carried into the workers
    with _worker_context().Pool(workers) as pool:
        pending = pool.map_async(_worker_process, [job] * workers)
        while not pending.ready():
            pending.wait(progress_every)  # returns as soon as the workers are done
            if progress is not None and not pending.ready():
                # A lost database: the workers retry on their own; the progress shows again when it is back.
                with contextlib.suppress(DatabaseLost):
                    progress(call(engine, deliveries.counts, job.wave_id, write=False, retry_for=0))
        for n, secs, gate in pending.get():
            attempted += n
            db_seconds += secs / workers  # the workers' database waits overlap
            gate_seconds += gate / workers
    return attempted, db_seconds, gate_seconds
