"""What a send is asked to do: its options (`SendOptions`), its timings (`Timings`), and the job each worker
gets (`Job`), in its own process too (a job is pickled to the worker processes)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from campaign.config import Config
from campaign.connection import RECONNECT_FOR
from campaign.notices.kept import TemplateSet
from campaign.store.deliveries import LEASE

__all__ = ["Job", "SendOptions", "Timings"]


@dataclass(frozen=True)
class Timings:
    """How long a send's leases hold and how often its workers beat; the production values by default. Tests
    pass shorter ones (a lease that runs out in a second, a database given up after two)."""

    lease: dt.timedelta = LEASE  # a claimed delivery is another worker's to take once its lease has run out
    heartbeat: float = 5.0  # seconds between heartbeats (a write: leases renewed, dead workers' deliveries given back)
    recount: float = 1.0  # seconds between counts of the live workers (a read): the rate share follows joins within it
    stale: dt.timedelta = dt.timedelta(seconds=20)  # a worker without a heartbeat this long is not live
    forget_after: dt.timedelta = dt.timedelta(minutes=10)  # a worker silent this long leaves the worker table
    reconnect_for: float = RECONNECT_FOR  # seconds a lost database is waited for (without progress) before it stops


@dataclass(frozen=True)
class SendOptions:
    ignore_window: bool = False
    workers: int = 1
    batch: int = 250
    dry_run: bool = False
    out_of_order: bool = False  # send a wave although an earlier `affected` wave has not gone out
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class Job:
    """One wave to send, as each of its workers gets it."""

    config: Config
    campaign_id: int
    slug: str
    wave: str
    wave_id: int
    options: SendOptions
    templates: TemplateSet | None = None  # what its messages are built from (read by the worker when None)
