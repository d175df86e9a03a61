"""A worker's feed: the wave's due deliveries claimed a batch at a time under the worker's lease, with what triage
needs of each batch (the recipients, their devices, their suppressions), and the look at the wave that tells an
idle worker whether to wait or to end. The check for a pause or a cancel comes with every claim."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection

from campaign import db
from campaign.connection import Database
from campaign.definition import Definition, WaveDef
from campaign.delivery.job import Job
from campaign.models import CANCELLED, PAUSED
from campaign.recipients import DeviceView, Recipient
from campaign.store import audience, deliveries
from campaign.store import campaigns as campaign_rows
from campaign.store import suppressions as suppression_rows
from campaign.store.deliveries import Claimed, Outlook

__all__ = ["Batch", "Feed", "stop_reason"]


def stop_reason(campaign_state: str, campaign_reason: str | None, wave_state: str,
                wave_reason: str | None) -> str | None:
    """Why sending must stop now (its campaign paused or cancelled, the wave paused), or None."""
    if campaign_state in (PAUSED, CANCELLED):
        return f"campaign {campaign_state}" + (f": {campaign_reason}" if campaign_reason else "")
    if wave_state == campaign_rows.PAUSED:
        return f"wave paused: {wave_reason}"
    return None


@dataclass(frozen=True)
class Batch:
    """A claimed batch and what triage needs of it, read in the claim's transaction."""

    claimed: list[Claimed]
    people: dict[str, Recipient]
    devices: dict[str, list[DeviceView]]
    suppressed: set[str]
    stop: str | None = None


class Feed:
    """Claims batches of one wave for one worker (`owner`); each claimed id joins `in_flight` until recorded."""

    def __init__(self, database: Database, job: Job, owner: str, definition: Definition, wave: WaveDef,
                 in_flight: set[int]) -> None:
        self.db, self.job, self.owner = database, job, owner
        self.d, self.wave = definition, wave
        self.in_flight = in_flight

    def claim_tx(self, conn: Connection, now: dt.datetime) -> Batch:
        """Claim a batch: one statement that commits by itself (on SQLite it holds the one write lock that
        every worker process shares); what triage needs of the batch is read afterwards, by `load_tx`. The
        check for a stop comes first: a pause committed between it and the claim stops the worker after this
        batch, as one committed just after the claim does."""
        stop = stop_reason(*campaign_rows.stopped(conn, self.job.wave_id))
        if stop:
            return Batch([], {}, {}, set(), stop)
        options = self.job.options
        claimed = deliveries.claim(conn, self.job.wave_id, self.owner, options.batch, now, options.ignore_window,
                                   lease=options.timings.lease)
        return Batch(claimed, {}, {}, set())

    def load_tx(self, conn: Connection, batch: Batch) -> Batch:
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
        return Batch(batch.claimed, people, devices,
                     suppression_rows.suppressed(conn, (p.email for p in people.values())))

    async def fetch(self) -> Batch:
        # Alone: on SQLite the write lock is held by the claim's UPDATE only (see `deliveries.claim`).
        batch: Batch = await self.db.write(self.claim_tx, db.utcnow(), alone=True)
        self.in_flight.update(c.id for c in batch.claimed)
        if batch.claimed:
            batch = await self.db.read(self.load_tx, batch)
        return batch

    async def look(self) -> Outlook:
        """Whether the wave has work left, now or later (see `deliveries.outlook`)."""
        return await self.db.read(deliveries.outlook, self.job.wave_id, db.utcnow(), self.job.options.ignore_window)
