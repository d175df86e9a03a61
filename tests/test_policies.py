"""The sending policies as values: fixed clocks and seeds, and properties checked against brute force."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign.definition import Limits, SendWindow
from campaign.policies import (
    FailureTracker,
    RateLimiter,
    RetryDecision,
    RetryPolicy,
    WindowCache,
    is_open,
    next_opening,
    share,
)

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham",
         "America/St_Johns", "UTC")
NOW = dt.datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def t(hhmm: str) -> dt.time:
    return dt.time.fromisoformat(hhmm)


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(zone))


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- retries -------------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(base_seconds=60, max_seconds=600, max_attempts=10, jitter=0)
    assert [policy.delay(a) for a in range(1, 7)] == [60, 120, 240, 480, 600, 600]
    assert policy.decide(2, NOW) == RetryDecision(retry=True, at=NOW + dt.timedelta(seconds=120))


def test_jitter_is_seeded_and_stays_in_its_band() -> None:
    policy = RetryPolicy(base_seconds=60, max_seconds=3600, max_attempts=6)
    first = policy.decide(3, NOW, random.Random(7))
    assert first == policy.decide(3, NOW, random.Random(7))
    assert first.at is not None and 192 <= (first.at - NOW).total_seconds() <= 288
    delays = {policy.delay(3, random.Random(seed)) for seed in range(50)}
    assert len(delays) > 40 and min(delays) >= 192 and max(delays) <= 288


def test_gives_up_at_max_attempts() -> None:
    policy = RetryPolicy(base_seconds=60, max_seconds=3600, max_attempts=3)
    assert policy.decide(2, NOW).retry
    assert policy.decide(3, NOW) == RetryDecision(retry=False, at=None)
    assert policy.decide(4, NOW) == RetryDecision(retry=False, at=None)
    assert RetryPolicy(60, 60, max_attempts=1).decide(1, NOW) == RetryDecision(False, None)


def test_never_sooner_than_a_second() -> None:
    policy = RetryPolicy(base_seconds=0.01, max_seconds=0.5, max_attempts=5)
    assert all(policy.delay(a, random.Random(a)) == 1.0 for a in range(1, 5))


def test_from_limits_and_validation() -> None:
    policy = RetryPolicy.from_limits(Limits(max_attempts=4, retry_base_seconds=30, retry_max_seconds=900))
    assert policy == RetryPolicy(30, 900, 4, 0.2)
    assert RetryPolicy.from_limits(Limits()) == RetryPolicy(60, 6 * 3600, 6)
    for bad in ((0, 10, 3, 0.2), (10, 5, 3, 0.2), (10, 20, 0, 0.2), (10, 20, 3, 1.0), (10, 20, 3, -0.1)):
        with pytest.raises(ValueError):
            RetryPolicy(*bad)
    with pytest.raises(ValueError, match="at least 1"):
        policy.decide(0, NOW)


def test_huge_attempt_counts_do_not_overflow() -> None:
    policy = RetryPolicy(base_seconds=60, max_seconds=3600, max_attempts=100_000, jitter=0)
    assert policy.delay(5000) == 3600 and policy.decide(99_999, NOW).at == NOW + dt.timedelta(hours=1)


policies = st.builds(
    lambda base, factor, attempts, jitter: RetryPolicy(base, base * factor, attempts, jitter),
    st.floats(0.01, 10_000), st.floats(1, 10_000), st.integers(1, 100), st.floats(0, 0.99))


@given(policy=policies, attempts=st.integers(1, 300), seed=st.integers(0, 2**32))
def test_retry_delay_properties(policy: RetryPolicy, attempts: int, seed: int) -> None:
    delay = policy.delay(attempts, random.Random(seed))
    ceiling = policy.max_seconds * (1 + policy.jitter)
    assert delay >= 1.0 and (delay <= ceiling or delay == 1.0)
    plain = min(policy.max_seconds, policy.base_seconds * 2.0 ** min(attempts - 1, 1000))
    low, high = plain * (1 - policy.jitter), plain * (1 + policy.jitter)
    assert delay == 1.0 or low * (1 - 1e-12) <= delay <= high * (1 + 1e-12)
    # The same draw never gives a shorter wait for a later attempt, so the expectation never decreases.
    assert delay <= policy.delay(attempts + 1, random.Random(seed))

    decision = policy.decide(attempts, NOW, random.Random(seed))
    if attempts >= policy.max_attempts:
        assert decision == RetryDecision(retry=False, at=None)
    else:
        assert decision.retry and decision.at is not None
        waited = (decision.at - NOW).total_seconds()
        assert 1.0 <= waited <= delay and delay - waited < 1e-6


# --- the send window: examples -------------------------------------------------------------------------------

DAY = SendWindow(t("09:00"), t("20:00"))
NIGHT = SendWindow(t("20:00"), t("06:00"))


def test_inside_returns_at_itself_and_outside_the_next_start() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    noon = local("Europe/Berlin", 2025, 6, 2, 12, 0, 30)
    assert next_opening(DAY, berlin, noon) == noon and next_opening(DAY, berlin, noon).tzinfo is UTC
    assert is_open(DAY, berlin, noon)
    evening = local("Europe/Berlin", 2025, 6, 2, 20, 0)
    assert not is_open(DAY, berlin, evening)  # end is exclusive
    assert next_opening(DAY, berlin, evening) == local("Europe/Berlin", 2025, 6, 3, 9, 0)
    early = local("Europe/Berlin", 2025, 6, 2, 8, 59, 59)
    assert next_opening(DAY, berlin, early) == local("Europe/Berlin", 2025, 6, 2, 9, 0)


def test_always_open() -> None:
    window = SendWindow(t("07:00"), t("07:00"))
    at = dt.datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
    assert is_open(window, ZoneInfo("Europe/Berlin"), at) and next_opening(window, ZoneInfo("UTC"), at) == at
    assert is_open(SendWindow(), ZoneInfo("UTC"), at)


def test_window_across_midnight() -> None:
    zone = ZoneInfo("America/New_York")
    assert next_opening(NIGHT, zone, local("America/New_York", 2025, 6, 2, 12)) == \
        local("America/New_York", 2025, 6, 2, 20)
    for hhmm in ("20:00", "23:59", "00:00", "05:59"):
        at = dt.datetime.combine(dt.date(2025, 6, 2), t(hhmm), zone)
        assert is_open(NIGHT, zone, at) and next_opening(NIGHT, zone, at) == at
    six = local("America/New_York", 2025, 6, 3, 6, 0)
    assert not is_open(NIGHT, zone, six)
    assert next_opening(NIGHT, zone, six) == local("America/New_York", 2025, 6, 3, 20)


def test_result_is_utc_for_any_input_offset() -> None:
    at = dt.datetime(2025, 6, 2, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7)))  # 10:00 UTC
    assert next_opening(DAY, ZoneInfo("UTC"), at) == at and next_opening(DAY, ZoneInfo("UTC"), at).tzinfo is UTC


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        next_opening(DAY, ZoneInfo("UTC"), dt.datetime(2025, 6, 2, 12))
    with pytest.raises(ValueError, match="no UTC offset"):
        is_open(DAY, ZoneInfo("UTC"), dt.datetime(2025, 6, 2, 12))


@pytest.mark.parametrize(("zone", "date", "utc"), [
    # Berlin: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    ("Europe/Berlin", (2025, 3, 30), dt.datetime(2025, 3, 30, 1, 0, tzinfo=UTC)),
    # New York: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    ("America/New_York", (2025, 3, 9), dt.datetime(2025, 3, 9, 7, 0, tzinfo=UTC)),
])
def test_start_in_the_spring_gap_opens_when_the_gap_ends(zone: str, date: tuple[int, int, int],
                                                         utc: dt.datetime) -> None:
    window = SendWindow(t("02:30"), t("20:00"))
    opening = next_opening(window, ZoneInfo(zone), local(zone, *date, 0, 0))
    assert opening == utc
    assert opening.astimezone(ZoneInfo(zone)).time() == t("03:00")


def test_window_wholly_inside_the_gap_opens_the_next_day() -> None:
    window = SendWindow(t("02:15"), t("02:45"))
    opening = next_opening(window, ZoneInfo("Europe/Berlin"), local("Europe/Berlin", 2025, 3, 30, 0, 0))
    assert opening == local("Europe/Berlin", 2025, 3, 31, 2, 15)


def test_lord_howe_half_hour_spring_gap() -> None:
    # 2025-10-05 02:00 +10:30 becomes 02:30 +11 (15:30 UTC the day before).
    zone = ZoneInfo("Australia/Lord_Howe")
    opening = next_opening(SendWindow(t("02:10"), t("09:00")), zone, local("Australia/Lord_Howe", 2025, 10, 5, 1))
    assert opening == dt.datetime(2025, 10, 4, 15, 30, tzinfo=UTC)
    assert opening.astimezone(zone).time() == t("02:30")


def test_start_in_the_autumn_overlap_takes_the_first_occurrence() -> None:
    # Berlin 2025-10-26: 03:00 CEST becomes 02:00 CET at 01:00 UTC, so 02:00–03:00 happens twice.
    window = SendWindow(t("02:30"), t("04:00"))
    opening = next_opening(window, ZoneInfo("Europe/Berlin"), local("Europe/Berlin", 2025, 10, 26, 1, 0))
    assert opening == dt.datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 CEST, not 02:30 CET


def test_falling_back_into_the_window_opens_it() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    at = dt.datetime(2025, 10, 26, 0, 45, tzinfo=UTC)  # 02:45 CEST, after the window closed
    # The clock goes back to 02:00 CET: inside 01:30–02:30 again, at once.
    assert next_opening(SendWindow(t("01:30"), t("02:30")), berlin, at) == dt.datetime(2025, 10, 26, 1, 0, tzinfo=UTC)
    # 02:00 CET is before 02:10, so the window opens at the second 02:10.
    assert next_opening(SendWindow(t("02:10"), t("02:30")), berlin, at) == \
        dt.datetime(2025, 10, 26, 1, 10, tzinfo=UTC)


def test_window_cache_agrees_and_caches_zones() -> None:
    cache = WindowCache(DAY)
    at = dt.datetime(2025, 6, 2, 7, 30, 15, tzinfo=UTC)
    assert cache.open_zones(at, ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Europe/Berlin"]) == \
        frozenset({"Europe/Berlin", "Asia/Kolkata"})
    assert cache.is_open("Europe/Berlin", at) and not cache.is_open("America/New_York", at)
    assert cache.next_opening("Europe/Berlin", at) == at
    assert cache.next_opening("America/New_York", at) == dt.datetime(2025, 6, 2, 13, 0, tzinfo=UTC)
    assert cache.zone("Asia/Kolkata") is cache.zone("Asia/Kolkata")
    always = WindowCache(SendWindow())
    assert always.open_zones(at, ["UTC", "Pacific/Chatham"]) == frozenset({"UTC", "Pacific/Chatham"})


# --- the send window: properties against brute force ---------------------------------------------------------


def _transitions_2025(name: str) -> list[dt.datetime]:
    """Offset changes in 2025, found minute by minute (independently of the code under test)."""
    zone, found = ZoneInfo(name), []
    day = dt.datetime(2025, 1, 1, tzinfo=UTC)
    while day.year == 2025:
        nxt = day + dt.timedelta(days=1)
        if day.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            minute = day
            while minute.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                minute += MINUTE
            found.append(minute)
        day = nxt
    return found


TRANSITIONS = {name: _transitions_2025(name) for name in ZONES}


def test_the_zones_under_test_have_the_transitions_we_think() -> None:
    assert [len(TRANSITIONS[z]) for z in ZONES] == [2, 2, 2, 0, 2, 2, 0]


def _open_by_hand(window: SendWindow, zone: ZoneInfo, at: dt.datetime) -> bool:
    clock = at.astimezone(zone).time()
    if window.start == window.end:
        return True
    if window.start < window.end:
        return window.start <= clock < window.end
    return clock >= window.start or clock < window.end


def _first_open_by_hand(window: SendWindow, zone: ZoneInfo, at: dt.datetime,
                        limit: dt.timedelta = dt.timedelta(days=2)) -> dt.datetime | None:
    """Step minute by minute: windows, offsets and transitions all sit on whole minutes."""
    if _open_by_hand(window, zone, at):
        return at
    minute = at.replace(second=0, microsecond=0) + MINUTE
    while minute - at <= limit:
        if _open_by_hand(window, zone, minute):
            return minute
        minute += MINUTE
    return None


times = st.builds(dt.time, st.one_of(st.integers(0, 4), st.integers(0, 23)),
                  st.one_of(st.sampled_from([0, 15, 30, 45]), st.integers(0, 59)))
windows = st.builds(SendWindow, times, times)


@st.composite
def zone_and_instant(draw: st.DrawFn) -> tuple[str, dt.datetime]:
    name = draw(st.sampled_from(ZONES))
    near = TRANSITIONS[name] or [dt.datetime(2025, 3, 30, 1, tzinfo=UTC)]
    if draw(st.booleans()):
        base = draw(st.sampled_from(near)) + draw(st.integers(-2 * 1440, 2 * 1440)) * MINUTE
    else:
        base = draw(st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2025, 12, 31))).replace(tzinfo=UTC)
    jitter = draw(st.sampled_from([dt.timedelta(), dt.timedelta(seconds=1), dt.timedelta(seconds=59.999999),
                                   dt.timedelta(seconds=17, microseconds=5)]))
    return name, base + jitter


@settings(max_examples=200, deadline=None)
@given(window=windows, where=zone_and_instant())
def test_next_opening_is_the_first_open_instant(window: SendWindow, where: tuple[str, dt.datetime]) -> None:
    name, at = where
    zone = ZoneInfo(name)
    opening = next_opening(window, zone, at)
    assert opening.tzinfo is UTC and opening >= at
    assert is_open(window, zone, opening)
    assert is_open(window, zone, at) == (opening == at) == _open_by_hand(window, zone, at)
    # Nothing earlier was open: the brute-force first opening is the same instant.
    assert _first_open_by_hand(window, zone, at) == opening
    assert WindowCache(window).next_opening(name, at) == opening


@settings(max_examples=100, deadline=None)
@given(window=windows, at=st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2025, 12, 31)))
def test_window_cache_matches_the_functions(window: SendWindow, at: dt.datetime) -> None:
    instant = at.replace(tzinfo=UTC)
    cache = WindowCache(window)
    for _ in range(2):  # the second round is answered from the cache
        assert cache.open_zones(instant, ZONES) == frozenset(
            z for z in ZONES if is_open(window, ZoneInfo(z), instant))
        for z in ZONES:
            assert cache.next_opening(z, instant) == next_opening(window, ZoneInfo(z), instant)


# --- the failure breaker -------------------------------------------------------------------------------------


def test_trips_exactly_at_the_threshold() -> None:
    tracker = FailureTracker()
    for i in range(200):
        tracker.record(i < 39)
    assert tracker.failures == 39 and not tracker.tripped(0.2)
    tracker.record(True)  # slides out a failure: still 39
    assert tracker.failures == 39 and not tracker.tripped(0.2)
    tracker.record(False)
    tracker = FailureTracker()
    for i in range(200):
        tracker.record(i < 40)
    assert tracker.rate == 0.2 and tracker.tripped(0.2) and not tracker.tripped(0.2000001)


def test_needs_a_minimum_of_attempts() -> None:
    tracker = FailureTracker()
    assert tracker.rate == 0.0 and not tracker.tripped(0.2) and not tracker.tripped(0.0, minimum=0)
    for _ in range(19):
        tracker.record(True)
    assert tracker.rate == 1.0 and not tracker.tripped(0.2)
    tracker.record(True)
    assert tracker.tripped(0.2) and tracker.seen == 20 and len(tracker) == 20
    tracker.reset()
    assert not tracker.tripped(0.2) and tracker.seen == 0 and tracker.failures == 0


def test_old_outcomes_slide_out() -> None:
    tracker = FailureTracker(size=10)
    for _ in range(10):
        tracker.record(True)
    for _ in range(10):
        tracker.record(False)
    assert tracker.failures == 0 and tracker.rate == 0 and len(tracker) == 10 and tracker.seen == 20
    with pytest.raises(ValueError):
        FailureTracker(size=0)


@given(size=st.integers(1, 50), outcomes=st.lists(st.booleans(), max_size=200),
       threshold=st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0]), minimum=st.integers(0, 30))
def test_tracker_matches_a_plain_list(size: int, outcomes: list[bool], threshold: float, minimum: int) -> None:
    tracker = FailureTracker(size)
    for failed in outcomes:
        tracker.record(failed)
    last = outcomes[-size:]
    assert tracker.failures == sum(last) and len(tracker) == len(last)
    exact = bool(last) and len(outcomes) >= minimum and \
        Fraction(sum(last), len(last)) >= Fraction(threshold).limit_denominator(1000)
    assert tracker.tripped(threshold, minimum) == exact


# --- the rate limit ------------------------------------------------------------------------------------------


def test_calls_at_one_instant_get_slots_one_interval_apart() -> None:
    limiter = RateLimiter(4, clock=FakeClock())
    assert [limiter.delay() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_burst_is_honored_then_paced() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    assert [limiter.delay() for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])
    clock.now += 10  # a long idle refills to the burst, not beyond
    assert [limiter.delay() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_time_passing_pays_the_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)
    assert limiter.delay() == 0 and limiter.delay() == 0.5
    clock.now += 0.5
    assert limiter.delay() == 0.5  # the previous slot is now; this one 1/rate later
    assert limiter.delay(4) == pytest.approx(2.5)
    limiter.delay(0)  # reserves nothing
    assert limiter.delay() == pytest.approx(3.0)


def test_set_rate_keeps_promised_slots() -> None:
    for new_rate, expected in ((5, 0.6), (20, 0.45)):
        limiter = RateLimiter(10, clock=FakeClock())
        assert [limiter.delay() for _ in range(5)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
        limiter.set_rate(new_rate)
        assert limiter.rate == new_rate and limiter.delay() == pytest.approx(expected)


def test_share_and_validation() -> None:
    assert share(50, 4) == 12.5 and share(50, 0) == 50 and share(50, 1) == 50
    for bad in (lambda: share(0, 2), lambda: RateLimiter(0), lambda: RateLimiter(1, burst=0),
                lambda: RateLimiter(1).set_rate(-1), lambda: RateLimiter(1).delay(-1)):
        with pytest.raises(ValueError):
            bad()


def test_acquire_sleeps_the_delay() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> list[float]:
        limiter = RateLimiter(4, clock=FakeClock(), sleep=sleep)
        return list(await asyncio.gather(*(limiter.acquire() for _ in range(3))))

    assert asyncio.run(main()) == [0.0, 0.25, 0.5]
    assert slept == [0.25, 0.5]


def test_acquire_with_the_real_clock() -> None:
    async def main() -> float:
        limiter = RateLimiter(1000)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.gather(*(limiter.acquire() for _ in range(6)))
        return loop.time() - began

    assert asyncio.run(main()) >= 0.004


@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 10),
       steps=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 10)), min_size=1, max_size=60))
def test_slots_conform_to_the_bucket(rate: float, burst: int, steps: list[tuple[float, int]]) -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(rate, burst=burst, clock=clock)
    slots: list[tuple[float, int]] = []
    for advance, n in steps:
        clock.now += advance
        n = min(n, burst)
        slots.append((clock.now + limiter.delay(n), n))
    times_ = [s for s, _ in slots]
    # First come, first served (up to float rounding: 8.0 + 10.0 may come back as 18.000000000000004).
    assert all(b >= a - 1e-9 * (1 + abs(a)) for a, b in itertools.pairwise(times_))
    # Over any span of slots, no more than burst + rate * span sends.
    eps = 1e-9 * (1 + rate * max(times_))
    for i in range(len(slots)):
        total = 0
        for j in range(i, len(slots)):
            total += slots[j][1]
            assert total <= burst + rate * (slots[j][0] - slots[i][0]) + eps
