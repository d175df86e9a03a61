"""Sending policies as values: retry backoff, the recipient's send window, the failure breaker, the rate limit.

Everything here is pure: time comes in as an argument or an injected clock, randomness as an injected
`random.Random`, and nothing touches the database, the network or the wall clock on its own. The send loop
(SPEC §6 delivery states, §8) composes them:

- `RetryPolicy.decide` turns a transient failure into "pending again at `at`" or "failed" (`max_attempts`).
- `next_opening` / `is_open` / `WindowCache` keep a delivery inside its recipient's local `[send_window]`.
- `FailureTracker` watches the last 200 attempts and says when the wave must pause (`pause_on_failure_rate`).
- `RateLimiter` paces one worker's sends.

How the campaign-wide rate is shared: `[limits] rate_per_second` is a budget for the whole campaign, across
every worker on every machine. Each live worker paces itself at `share(rate_per_second, live_workers)`, an
equal slice. The sender counts live workers from its heartbeat table (not this module's business) and calls
`RateLimiter.set_rate(share(...))` whenever that count changes, so the sum over workers stays at the budget:
a worker that dies stops spending its slice, and the survivors pick it up at their next recount.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from campaign.definition import Limits, SendWindow

__all__ = [
    "FailureTracker",
    "RateLimiter",
    "RetryDecision",
    "RetryPolicy",
    "WindowCache",
    "is_open",
    "next_opening",
    "share",
]

UTC = dt.UTC
MIN_RETRY_SECONDS = 1.0


# --- retries -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryDecision:
    """What to do with a delivery after a transient failure: try again at `at`, or give up (`failed`)."""

    retry: bool
    at: dt.datetime | None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, for a bounded number of attempts."""

    base_seconds: float
    max_seconds: float
    max_attempts: int
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.base_seconds > 0:
            raise ValueError(f"base_seconds must be greater than 0, not {self.base_seconds}")
        if not self.max_seconds >= self.base_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must be at least base_seconds ({self.base_seconds})")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), not {self.jitter}")

    @classmethod
    def from_limits(cls, limits: Limits, jitter: float = 0.2) -> RetryPolicy:
        """The policy a campaign's `[limits]` asks for."""
        return cls(limits.retry_base_seconds, limits.retry_max_seconds, limits.max_attempts, jitter)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (ignores `max_attempts`)."""
        if attempts < 1:
            raise ValueError(f"attempts counts attempts already made, so it is at least 1, not {attempts}")
        # 2.0 ** 1024 overflows a float; long before that the cap applies anyway.
        exponent = attempts - 1
        plain = self.max_seconds if exponent >= 1000 else min(self.max_seconds, self.base_seconds * 2.0**exponent)
        u = (rng.random() if rng is not None else random.random())
        # One uniform draw scaled by the plain delay: for a fixed draw, the delay never decreases with
        # `attempts`, so it does not decrease in expectation either.
        jittered = plain * (1.0 + self.jitter * (2.0 * u - 1.0))
        # The floor wins over the ceiling: a retry sooner than a second is never what anyone meant.
        return max(MIN_RETRY_SECONDS, min(jittered, self.max_seconds * (1.0 + self.jitter)))

    def decide(self, attempts: int, now: dt.datetime, rng: random.Random | None = None) -> RetryDecision:
        """After `attempts` attempts (the latest failed transiently): when to try again, or not at all."""
        if attempts < 1:
            raise ValueError(f"attempts counts attempts already made, so it is at least 1, not {attempts}")
        if attempts >= self.max_attempts:
            return RetryDecision(retry=False, at=None)
        # Rounded down to the microsecond timedelta keeps, so `at - now` stays within the bounds of `delay`.
        micros = math.floor(self.delay(attempts, rng) * 1_000_000)
        return RetryDecision(retry=True, at=now + dt.timedelta(microseconds=micros))


# --- the send window -----------------------------------------------------------------------------------------

# Offsets are sampled this often when looking for a DST transition; two transitions closer than this that
# cancel each other out would be missed, and no zone has those.
_OFFSET_PROBE = dt.timedelta(hours=1)


def _utc(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        # astimezone() would read a naive value as the host's local time: a silent, host-dependent error.
        raise ValueError(f"{at.isoformat()} has no UTC offset; pass an aware datetime")
    return at.astimezone(UTC)


def _inside(window: SendWindow, local: dt.time) -> bool:
    if window.start < window.end:
        return window.start <= local < window.end
    # start > end wraps midnight (20:00–06:00); start == end is always open and never gets here.
    return local >= window.start or local < window.end


def is_open(window: SendWindow, zone: ZoneInfo, at: dt.datetime) -> bool:
    """Whether the recipient's local wall-clock time at the instant `at` lies in [start, end)."""
    instant = _utc(at)
    if window.always_open:
        return True
    return _inside(window, instant.astimezone(zone).time())


def _offset(zone: ZoneInfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _offset_change(zone: ZoneInfo, lo: dt.datetime, hi: dt.datetime) -> dt.datetime | None:
    """The first instant in (lo, hi] whose UTC offset differs from lo's, or None."""
    offset = _offset(zone, lo)
    probe = lo
    while probe < hi:
        nxt = min(probe + _OFFSET_PROBE, hi)
        if _offset(zone, nxt) != offset:
            # Transitions fall on whole UTC seconds (TZif stores integer times): bisect over seconds.
            left = math.floor(probe.timestamp())  # offset here is still `offset`
            right = math.ceil(nxt.timestamp())  # offset here is the new one
            while right - left > 1:
                mid = (left + right) // 2
                if _offset(zone, dt.datetime.fromtimestamp(mid, UTC)) == offset:
                    left = mid
                else:
                    right = mid
            return dt.datetime.fromtimestamp(right, UTC)
        probe = nxt
    return None


def next_opening(window: SendWindow, zone: ZoneInfo, at: dt.datetime) -> dt.datetime:
    """The earliest instant (aware, UTC) at or after `at` when the window is open in `zone`."""
    instant = _utc(at)
    if window.always_open or _inside(window, instant.astimezone(zone).time()):
        return instant
    # Walk forward through stretches of constant UTC offset. Within one, local time runs like UTC, so a
    # closed window opens exactly when local time reaches `start`. At a transition local time jumps: forward
    # over `start` (spring: the opening is the first instant after the gap) or back into the window (autumn).
    # Walking in UTC order also picks the first of two occurrences of a repeated local time.
    for _ in range(64):  # each turn crosses a transition or returns; a window opens within a day or two
        offset = _offset(zone, instant)
        local = (instant + offset).replace(tzinfo=None)
        start = dt.datetime.combine(local.date(), window.start)
        if start < local:
            start += dt.timedelta(days=1)
        candidate = (start - offset).replace(tzinfo=UTC)
        change = _offset_change(zone, instant, candidate)
        if change is None:
            return candidate
        instant = change
        if _inside(window, instant.astimezone(zone).time()):
            return instant
    raise RuntimeError(f"no opening of {window} in {zone.key} found after {at.isoformat()}")  # pragma: no cover


class WindowCache:
    """`is_open` / `next_opening` for many recipients, memoized per (zone, minute).

    Exact for windows on whole minutes (a definition only has HH:MM) in zones whose offsets and transitions
    fall on whole minutes (every zone since the 1970s): the answer then cannot change within a UTC minute.
    """

    MAX_ENTRIES = 65_536  # a sender asks about the current minute; old minutes are dropped wholesale

    def __init__(self, window: SendWindow) -> None:
        self.window = window
        self._zones: dict[str, ZoneInfo] = {}
        # (zone, UTC minute) -> None when open then, else the next opening (the same for the whole minute).
        self._answers: dict[tuple[str, dt.datetime], dt.datetime | None] = {}

    def zone(self, name: str) -> ZoneInfo:
        """The ZoneInfo for an IANA name (raises ZoneInfoNotFoundError for an unknown one)."""
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    def _answer(self, zone_name: str, instant: dt.datetime) -> dt.datetime | None:
        minute = instant.replace(second=0, microsecond=0)
        key = (zone_name, minute)
        try:
            return self._answers[key]
        except KeyError:
            pass
        zone = self.zone(zone_name)
        answer = None if is_open(self.window, zone, minute) else next_opening(self.window, zone, minute)
        if len(self._answers) >= self.MAX_ENTRIES:
            self._answers.clear()
        self._answers[key] = answer
        return answer

    def is_open(self, zone_name: str, at: dt.datetime) -> bool:
        """Whether the window is open at `at` for a recipient in `zone_name`."""
        instant = _utc(at)
        return self.window.always_open or self._answer(zone_name, instant) is None

    def next_opening(self, zone_name: str, at: dt.datetime) -> dt.datetime:
        """The earliest instant (UTC) at or after `at` when the window is open in `zone_name`."""
        instant = _utc(at)
        if self.window.always_open:
            return instant
        answer = self._answer(zone_name, instant)
        return instant if answer is None else answer

    def open_zones(self, now: dt.datetime, zones: Iterable[str]) -> frozenset[str]:
        """Those of `zones` in which the window is open at `now`."""
        instant = _utc(now)
        return frozenset(name for name in set(zones) if self.is_open(name, instant))


# --- the failure breaker -------------------------------------------------------------------------------------


class FailureTracker:
    """The share of failures among the last `size` attempts, to pause a wave that is failing."""

    def __init__(self, size: int = 200) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self._outcomes: deque[bool] = deque(maxlen=size)
        self._failures = 0
        self._seen = 0

    def record(self, failed: bool) -> None:
        """Count one attempt's outcome (True: it failed), forgetting the oldest beyond `size`."""
        if len(self._outcomes) == self.size and self._outcomes[0]:
            self._failures -= 1  # the deque drops this one on append
        self._outcomes.append(failed)
        self._failures += failed
        self._seen += 1

    def reset(self) -> None:
        """Forget everything (a resumed wave starts with a clean slate)."""
        self._outcomes.clear()
        self._failures = 0
        self._seen = 0

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def failures(self) -> int:
        """Failures among the attempts in the window."""
        return self._failures

    @property
    def seen(self) -> int:
        """Attempts recorded since creation or the last reset, including those slid out of the window."""
        return self._seen

    @property
    def rate(self) -> float:
        """Failures / attempts in the window; 0.0 before any attempt."""
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    def tripped(self, threshold: float, minimum: int = 20) -> bool:
        """Whether at least `minimum` attempts were seen and the failure rate is at or above `threshold`."""
        # Division, not `failures >= threshold * n`: 40/200 and 0.2 are the same float, 0.2 * 200 need not be.
        return self._seen >= minimum and bool(self._outcomes) and self._failures / len(self._outcomes) >= threshold


# --- the rate limit ------------------------------------------------------------------------------------------


def burst_of(rate: float) -> float:
    """The burst of a worker's bucket at `rate`: a twentieth of a second's sends (at least one). Each worker's
    bucket lets `rate` a second and its burst through, so the workers together stay within 5 % of the campaign's
    rate in any second (a burst of a tenth of the whole rate per worker let 4 workers reach 140 at 100/s)."""
    return max(1.0, rate / 20)


def share(rate: float, workers: int) -> float:
    """One live worker's slice of a campaign-wide rate: `rate / workers` (a lone or uncounted worker: all)."""
    if not rate > 0:
        raise ValueError(f"rate must be greater than 0, not {rate}")
    return rate / max(1, workers)


class RateLimiter:
    """A token bucket that hands out send slots: `delay(n)` reserves n sends and says how long to wait first.

    Reservations may run the bucket into debt, so callers sharing one limiter (tasks of one asyncio loop)
    get successive slots `1 / rate` apart instead of all waking together.
    """

    def __init__(self, rate_per_second: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be greater than 0, not {rate_per_second}")
        # Default burst 1: sends are paced evenly from the start rather than bunched.
        self.burst = 1.0 if burst is None else float(burst)
        if not self.burst > 0:
            raise ValueError(f"burst must be greater than 0, not {burst}")
        self._rate = float(rate_per_second)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst  # start full: the first `burst` sends go at once
        self._updated = clock()

    @property
    def rate(self) -> float:
        """Sends per second this limiter allows."""
        return self._rate

    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)  # a clock that steps back must not mint tokens
        self._tokens = min(self.burst, self._tokens + elapsed * self._rate)
        self._updated = now
        return now

    def delay(self, n: int = 1) -> float:
        """Reserve `n` sends; return the seconds to wait before making them (0.0: go now)."""
        if n < 0:
            raise ValueError(f"n must not be negative, not {n}")
        self._refill()
        self._tokens -= n
        return -self._tokens / self._rate if self._tokens < 0 else 0.0

    def set_rate(self, rate_per_second: float, burst: float | None = None) -> None:
        """Change the rate (the worker count changed), and the burst when given, keeping the slots already handed
        out."""
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be greater than 0, not {rate_per_second}")
        if burst is not None and not burst > 0:
            raise ValueError(f"burst must be greater than 0, not {burst}")
        self._refill()
        if burst is not None:
            self.burst = float(burst)
            self._tokens = min(self._tokens, self.burst)
        if self._tokens < 0:
            # A debt is a queue of promised send times: keep the last one where it is, so new reservations
            # follow it at the new spacing rather than jumping ahead of it or lagging behind.
            self._tokens *= rate_per_second / self._rate
        self._rate = float(rate_per_second)

    async def acquire(self, n: int = 1) -> float:
        """Wait until `n` sends are allowed (reserving them); return the seconds waited."""
        wait = self.delay(n)
        if wait > 0:
            await self._sleep(wait)
        return wait
