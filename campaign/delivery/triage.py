"""Triage: what becomes of a claimed delivery — suppressed, expired, outside its window, skipped, handed back,
or composed and sent (`Triage`) — and what an SMTP outcome makes of it (`after_send`). Pure: the claimed row, the
loaded data and the clock in, a `Result` out."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from campaign.delivery.envelope import Outcome
from campaign.models import BOUNCED, EXPIRED, FAILED, PENDING, SENT, SKIPPED, SUPPRESSED
from campaign.policies import RetryPolicy, WindowCache
from campaign.recipients import DeviceView, Recipient
from campaign.store import deliveries
from campaign.store.deliveries import Claimed, Proof, Result

__all__ = ["EXPIRED_ERROR", "Compose", "Triage", "after_send", "handed_back"]


@dataclass(frozen=True)
class Compose:
    """Triage's answer for a delivery to be composed and sent."""

    claimed: Claimed
    person: Recipient
    devices: tuple[DeviceView, ...]


EXPIRED_ERROR = deliveries.EXPIRED_ERROR


@dataclass
class Triage:
    """Decides, from the claimed row, the data loaded for it and the clock, whether a delivery is sent.

    `windows` is None under --ignore-window. The only state is `WindowCache`'s memo of zone openings."""

    expires: dt.datetime
    windows: WindowCache | None

    def __call__(self, c: Claimed, person: Recipient | None, devices: list[DeviceView] | tuple[DeviceView, ...],
                 suppressed: bool, now: dt.datetime) -> Result | Compose:
        if person is None or suppressed:
            return Result(c.id, SUPPRESSED, now, error="the address is suppressed")
        if now >= self.expires:
            return Result(c.id, EXPIRED, now, error=EXPIRED_ERROR)
        if self.windows is not None and not self.windows.is_open(person.timezone, now):
            return Result(c.id, PENDING, now, attempts_back=1,
                          not_before=self.windows.next_opening(person.timezone, now))
        if not devices:
            return Result(c.id, SKIPPED, now, error="no longer in the wave's audience")
        return Compose(c, person, tuple(devices))


def handed_back(c: Claimed, now: dt.datetime, error: str | None = None) -> Result:
    """Back to `pending`, the attempt not counted: not tried (after a message that would not build, or
    when the send stops), or tried and not built (`error`, G5)."""
    return Result(c.id, PENDING, now, attempts_back=1, error=error)


def after_send(c: Claimed, outcome: Outcome, message_id: str, locale: str, retry: RetryPolicy,
               rng: random.Random, now: dt.datetime, proof: Proof | None = None) -> Result:
    """What an SMTP outcome makes of the delivery. `proof`, of the message handed to the relay, is kept whatever
    the outcome (a later attempt's replaces it)."""
    if outcome.status == "sent":
        return Result(c.id, SENT, now, message_id=message_id, locale=locale, proof=proof)
    if outcome.status == "failed":  # the relay cannot take it; the address is not at fault: no suppression
        return Result(c.id, FAILED, now, locale=locale, error=outcome.detail, proof=proof)
    if outcome.status == "permanent":
        return Result(c.id, BOUNCED, now, message_id=message_id, locale=locale, error=outcome.detail, proof=proof)
    decision = retry.decide(c.attempts, now, rng)
    if decision.retry:
        return Result(c.id, PENDING, now, locale=locale, error=outcome.detail, next_attempt_at=decision.at,
                      proof=proof)
    return Result(c.id, FAILED, now, locale=locale, error=outcome.detail, proof=proof)
