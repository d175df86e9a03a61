"""The batches a flip or rollback recorded for the settings service (`[apply] kind = "http"`, G14), and what
becomes of them: `Applier` sends each (again, under the same Idempotency-Key, while the service does not
answer) and writes the service's answers; `Preview`, under a dry run, counts what would go and sends nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from campaign import campaigns, db
from campaign.cutoff import apply as service_api
from campaign.cutoff.tally import ApplyTally, device_row, listed
from campaign.store import changes as store

RETRY = service_api.Retry()  # between tries of a batch the settings service did not answer


@dataclass(frozen=True)
class Service:
    """The settings service a run goes through, and the pace of its tries: values passed in, with production
    defaults (a test passes its own client, a quick `Retry`, a `sleep` that only records)."""

    client: service_api.SettingsService | None = None  # default: the definition's, token from the environment
    retry: service_api.Retry = RETRY
    sleep: Callable[[float], None] = time.sleep


SERVICE = Service()  # the definition's, at the production pace


class Stop(Exception):
    """A batch got no usable answer: the run stops there; its changes wait for the next run."""

    def __init__(self, reason: str, paused: bool) -> None:
        super().__init__(reason)
        self.reason, self.paused = reason, paused

    def record(self, tally: ApplyTally) -> None:
        if self.paused:
            tally.paused = self.reason
        else:
            tally.unavailable = self.reason


def open_client(c: campaigns.CampaignRow) -> service_api.SettingsService:
    a = c.definition.apply
    return service_api.HttpSettingsService(a, c.slug, service_api.token_from_env(a))


def _change_id(change_id: int, operation: str) -> str:
    """The contract's change_id: the change row's id for the flip; its rollback is a change of its own."""
    return str(change_id) if operation == store.FLIP_OP else f"{change_id}-rollback"


class Applier:
    """Sends recorded batches to the service and writes its answers, retrying under the same key."""

    def __init__(self, engine: Engine, client: service_api.SettingsService, c: campaigns.CampaignRow,
                 tally: ApplyTally, clock: Callable[[], dt.datetime], service: Service) -> None:
        self.engine, self.client, self.c, self.tally = engine, client, c, tally
        self.clock, self.service = clock, service

    @property
    def done(self) -> int:
        """Changes the service applied in this run."""
        return self.tally.applied

    def send(self, batch: store.ApplyBatchRow) -> store.Settled:
        d = self.c.definition
        ours: dict[str, int] = {}
        changes = []
        for o in batch.changes:
            cid = _change_id(o.change_id, batch.operation)
            ours[cid] = o.change_id
            changes.append(service_api.Change(cid, o.device_id, d.setting, o.expect, o.value))
        retry = self.service.retry
        tries = 0
        while True:
            tries += 1
            try:
                answers = self.client.send(batch.key, batch.operation, changes)
                break
            except service_api.Transient as exc:
                if tries >= retry.attempts:
                    self._failed(batch, tries, f"no usable answer after {tries} tries (last: {exc})", paused=False)
                self.tally.retries += 1
                self.service.sleep(retry.delay(tries))
            except service_api.Refused as exc:
                self._failed(batch, tries, f"the settings service refused batch {batch.id} ({len(changes)} "
                                           f"change(s), Idempotency-Key {batch.key}): {exc}", paused=True)
        with db.write(self.engine, bulk=True) as conn:
            done = store.settle(conn, self.c.id, d, batch,
                                {ours[k]: (a.status, a.value) for k, a in answers.items()}, tries, self.clock())
        t = self.tally
        t.sent += len(changes)
        t.batches += 1
        t.applied += done.applied
        t.left += len(done.left)
        t.unknown_device += len(done.unknown)
        listed(t.left_devices, map(device_row, done.left))
        listed(t.unknown_devices, map(device_row, done.unknown))
        return done

    def resend(self, operation: str) -> None:
        """Send again, under their keys, the batches of `operation` an earlier run left unanswered."""
        with db.read(self.engine) as conn:
            left_over = store.unsettled_batches(conn, self.c.id, self.c.definition, operation)
        for batch in left_over:
            self.send(batch)
            self.tally.resent_batches += 1

    def resend_flip_first(self) -> None:
        """For a rollback: the flip's batches still waiting, sent again first (a change applied late is then rolled
        back too). Counted apart: of them, only what went (changes, batches sent again, retries) counts here."""
        flip = Applier(self.engine, self.client, self.c, ApplyTally(self.tally.url), self.clock, self.service)
        try:
            flip.resend(store.FLIP_OP)
        finally:
            self.tally.sent += flip.tally.sent
            self.tally.resent_batches += flip.tally.resent_batches
            self.tally.retries += flip.tally.retries

    def _failed(self, batch: store.ApplyBatchRow, tries: int, reason: str, paused: bool) -> None:
        with db.write(self.engine) as conn:
            store.batch_failed(conn, batch.id, tries, self.clock(), reason, paused)
        raise Stop(reason, paused)


class Preview:
    """A dry run's stand-in for `Applier`: counts what would go (first what earlier runs left waiting, then each
    batch recorded), sends nothing; the service's answers are unknown."""

    def __init__(self, tally: ApplyTally, earlier: store.ApplyState) -> None:
        self.tally = tally
        self.done = 0  # changes that would go in the batches of this run
        tally.sent, tally.batches = earlier.waiting + earlier.undoing, earlier.batches_waiting

    def send(self, batch: store.ApplyBatchRow) -> None:
        self.tally.sent += len(batch.changes)
        self.tally.batches += 1
        self.done += len(batch.changes)

    def resend(self, operation: str) -> None:
        """Counted already."""

    def resend_flip_first(self) -> None:
        """Counted already."""
