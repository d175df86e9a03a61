"""The campaign's clock and the UTC types every layer shares: `utcnow` (real, or simulated by `CAMPAIGN_CLOCK`),
`UTCDateTime`, the column type that keeps every timestamp aware and in UTC, and `parse_duration` (`7d`, `2h`)."""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from typing import Any

from sqlalchemy import DateTime, TypeDecorator
from sqlalchemy.engine import Dialect

from campaign.errors import ConfigError

UTC = dt.UTC
CLOCK_ENV = "CAMPAIGN_CLOCK"
DURATION_RE = re.compile(r"^\s*(?:\d+\s*[smhd]\s*)+$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@functools.cache
def _clock_offset(value: str) -> dt.timedelta:
    """How far the clock `CAMPAIGN_CLOCK=INSTANT` (ISO 8601 with an offset) is set from the real one: it starts at
    INSTANT when first read in this process and runs at normal speed from there. For rehearsals and the demo,
    which replays a campaign whose dates have passed; unset, the clock is the real one."""
    try:
        start = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{CLOCK_ENV}={value!r} is not an ISO 8601 instant (e.g. 2025-03-14T09:00:00Z)") from None
    if start.tzinfo is None:
        raise ConfigError(f"{CLOCK_ENV}={value!r} needs an offset (e.g. Z or -07:00)")
    return start - dt.datetime.now(UTC)


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime (`CAMPAIGN_CLOCK` simulates another time: see `_clock_offset`)."""
    simulated = os.environ.get(CLOCK_ENV)
    offset = _clock_offset(simulated) if simulated else None  # first, so the first reading is the instant itself
    now = dt.datetime.now(UTC)
    return now + offset if offset is not None else now


def parse_duration(value: str) -> dt.timedelta:
    """`7d`, `36h`, `1d 12h`, `90m`, `30s`: a positive duration (min_notice, the flip's stage_wait)."""
    if not DURATION_RE.match(value):
        raise ValueError(f"{value!r} is not a duration such as 7d, 36h, 1d 12h, 90m or 30s")
    seconds = sum(int(n) * DURATION_UNITS[unit] for n, unit in re.findall(r"(\d+)\s*([smhd])", value))
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime: stored as naive UTC on SQLite, as timestamptz on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite can hand back the stored text
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
