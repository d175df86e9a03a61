"""What a flip or a rollback reports: its result (`--json` is `as_json()`), what it did with the settings
service, and the devices it lists by name."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from campaign.results import Fields

LISTED = 1000  # devices listed by name in a result (held back, waiting, left); the counts are always whole


def iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def device_row(r: Any) -> dict[str, Any]:
    """A device as a result lists it (held back, left, unknown to the service): its account and why."""
    return {"device_id": r.device_id, "account_id": r.account_id, "note": r.note}


def listed(listing: list[dict[str, Any]], rows: Iterable[dict[str, Any]]) -> None:
    """Add `rows` to `listing`, up to `LISTED` in all."""
    listing.extend(itertools.islice(rows, max(LISTED - len(listing), 0)))


@dataclass
class FlipResult:
    """What a flip did (or, under `dry_run`, would do)."""

    campaign: str
    dry_run: bool
    changed: int  # devices switched by this run
    held_back: int  # the campaign's devices held back now (no delivered notice)
    waiting: int  # the campaign's devices waiting for fair notice now
    next_due: dt.datetime | None  # when the first of them comes due
    last_due: dt.datetime | None
    held_back_why: dict[str, int]
    held_back_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED, by device id
    waiting_devices: list[dict[str, Any]] = field(default_factory=list)
    total_changed: int = 0  # the campaign's devices changed, by this run and earlier ones
    batches: int = 0
    at: dt.datetime | None = None
    approval: str | None = None  # a dry run's word on a missing approval, which the real run refuses for
    apply: dict[str, Any] | None = None  # [apply] kind = "http": what went to the settings service (ApplyTally)
    stage: dict[str, Any] | None = None  # [flip] stages: the stage of this run, its guards, the next (stages.close)

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("next_due", "last_due", "at"):
            out[key] = iso(out[key])
        for key in ("apply", "stage"):
            if out[key] is None:
                del out[key]
        return out

    def audit(self) -> dict[str, Any]:
        """The audit event's counts."""
        return {"changed": self.changed, "held_back": self.held_back, "waiting": self.waiting,
                "next_due": iso(self.next_due), "batches": self.batches}


@dataclass
class RollbackResult:
    """What a rollback did (or would do)."""

    campaign: str
    dry_run: bool
    rolled_back: int  # changes undone by this run
    left: int  # changes left by this run: the person changed the setting since
    left_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED
    total_rolled_back: int = 0
    total_left: int = 0
    batches: int = 0
    at: dt.datetime | None = None
    apply: dict[str, Any] | None = None  # [apply] kind = "http": what went to the settings service (ApplyTally)

    def as_json(self) -> dict[str, Any]:
        out = {**self.__dict__, "at": iso(self.at)}
        if out["apply"] is None:
            del out["apply"]
        return out

    def audit(self) -> dict[str, Any]:
        """The audit event's counts."""
        return {"rolled_back": self.rolled_back, "left": self.left, "batches": self.batches}


@dataclass
class ApplyTally(Fields):
    """What one run did with the settings service (under a dry run: would do; the service's answers unknown)."""

    url: str
    sent: int = 0  # changes sent by this run, those an earlier run left waiting included
    batches: int = 0  # batches sent and answered for
    resent_batches: int = 0  # of which an earlier run had recorded (sent again under their keys)
    applied: int = 0
    left: int = 0  # conflicts: the device did not hold `expect`
    unknown_device: int = 0
    retries: int = 0
    waiting: int = 0  # the campaign's changes still waiting for the service after this run
    paused: str | None = None  # a refusal (4xx) or an answer outside the contract: a person must look
    unavailable: str | None = None  # no usable answer after every retry: the batch waits for the next run
    left_devices: list[dict[str, Any]] = field(default_factory=list)  # the first LISTED
    unknown_devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stopped(self) -> str | None:
        return self.paused or self.unavailable

    def audit(self) -> dict[str, Any]:
        """The audit event's detail: the counts and reasons, without the device lists."""
        return {k: v for k, v in self.as_json().items() if k not in ("left_devices", "unknown_devices")}
