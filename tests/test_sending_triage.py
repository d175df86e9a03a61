"""The send loop's triage, without I/O: what becomes of each claimed delivery (suppressed, expired, outside
its send window, skipped, handed back, composed) and what an SMTP outcome makes of it."""

from __future__ import annotations

import datetime as dt
import random

from campaign.definition import SendWindow
from campaign.delivery.transport import Outcome
from campaign.delivery.triage import Compose, Triage, after_send, handed_back
from campaign.policies import RetryPolicy, WindowCache
from campaign.recipients import DeviceView, Recipient
from campaign.store.deliveries import Claimed, Result

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)  # 12:00 in UTC, 21:00 in Tokyo
EXPIRES = NOW + dt.timedelta(days=1)
C = Claimed(7, "a1", attempts=1)
PAT = Recipient("a1", "pat@example.com", "Pat", "en-US", "UTC")
TOKYO = Recipient("a1", "pat@example.com", "Pat", "ja-JP", "Asia/Tokyo")
SPEAKER = (DeviceView("d1", "Kitchen", "Echo Dot"),)
OFFICE_HOURS = WindowCache(SendWindow(dt.time(9, 0), dt.time(17, 0)))


def test_a_deliverable_one_is_composed() -> None:
    assert Triage(EXPIRES, OFFICE_HOURS)(C, PAT, SPEAKER, False, NOW) == Compose(C, PAT, SPEAKER)
    assert Triage(EXPIRES, None)(C, PAT, list(SPEAKER), False, NOW) == Compose(C, PAT, SPEAKER)


def test_suppressed_or_gone_is_never_attempted() -> None:
    triage = Triage(EXPIRES, None)
    for person, suppressed in ((PAT, True), (None, False)):
        result = triage(C, person, SPEAKER, suppressed, NOW)
        assert isinstance(result, Result)
        assert (result.state, result.attempts_back, result.error) == ("suppressed", 0, "the address is suppressed")


def test_past_the_waves_expiry_is_expired() -> None:
    result = Triage(NOW, None)(C, PAT, SPEAKER, False, NOW)
    assert isinstance(result, Result) and result.state == "expired"


def test_outside_the_window_waits_for_its_opening_uncounted() -> None:
    result = Triage(EXPIRES, OFFICE_HOURS)(C, TOKYO, SPEAKER, False, NOW)
    assert result == Result(7, "pending", NOW, attempts_back=1,
                            not_before=dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC))  # 09:00 in Tokyo
    assert isinstance(Triage(EXPIRES, None)(C, TOKYO, SPEAKER, False, NOW), Compose)  # --ignore-window


def test_left_the_audience_is_skipped() -> None:
    result = Triage(EXPIRES, None)(C, PAT, (), False, NOW)
    assert isinstance(result, Result)
    assert (result.state, result.error) == ("skipped", "no longer in the wave's audience")


def test_the_order_of_the_checks() -> None:
    # Suppression wins over everything; expiry over the window; the window over the audience.
    assert Triage(NOW, OFFICE_HOURS)(C, TOKYO, (), True, NOW).state == "suppressed"  # type: ignore[union-attr]
    assert Triage(NOW, OFFICE_HOURS)(C, TOKYO, (), False, NOW).state == "expired"  # type: ignore[union-attr]
    assert Triage(EXPIRES, OFFICE_HOURS)(C, TOKYO, (), False, NOW).state == "pending"  # type: ignore[union-attr]


def test_handed_back_is_not_counted() -> None:
    assert handed_back(C, NOW) == Result(7, "pending", NOW, attempts_back=1)
    assert handed_back(C, NOW, error="boom").error == "boom"


RETRY = RetryPolicy(base_seconds=10, max_seconds=60, max_attempts=3, jitter=0)


def test_after_send() -> None:
    rng = random.Random(1)
    sent = after_send(C, Outcome("sent"), "<m@x>", "en", RETRY, rng, NOW)
    assert sent == Result(7, "sent", NOW, message_id="<m@x>", locale="en")
    bounced = after_send(C, Outcome("permanent", 550, "550 no such user"), "<m@x>", "en", RETRY, rng, NOW)
    assert (bounced.state, bounced.message_id, bounced.error) == ("bounced", "<m@x>", "550 no such user")
    failed = after_send(C, Outcome("failed", 553, "no SMTPUTF8"), "<m@x>", "en", RETRY, rng, NOW)
    assert (failed.state, failed.next_attempt_at) == ("failed", None)
    retry = after_send(C, Outcome("transient", 421, "busy"), "<m@x>", "en", RETRY, rng, NOW)
    assert (retry.state, retry.next_attempt_at, retry.message_id) == ("pending", NOW + dt.timedelta(seconds=10), None)
    last = after_send(Claimed(7, "a1", attempts=3), Outcome("transient", 421, "busy"), "<m@x>", "en", RETRY, rng,
                      NOW)
    assert (last.state, last.error) == ("failed", "busy")
