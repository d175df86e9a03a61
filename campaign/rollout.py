"""`[flip]`: the flip in stages (1 %, then 10 %, …, then everyone), the wait between them and the guards that halt
it — parsed and validated — and which stage each account's devices belong to.

An account's stage is fixed by a hash of (campaign slug, account id): sha256, its first four bytes as an unsigned
number, modulo `BUCKETS`. The same on every machine and in every process (never Python's `hash()`), so a re-run, a
rollback and another scheduler agree on who is in which stage; and all the devices of one account go together
(one person is never half switched for a whole stage_wait). A device is in the first stage whose share covers its
account's bucket: `"1%"` is buckets 0–99. The SQL of the same rule is `campaign.store.stages.bucket`; a test proves
the two agree.

The default, `stages = ["100%"]`, is the flip as it was before stages: one run, everyone, no guard.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from campaign.clock import parse_duration

BUCKETS = 10_000  # a stage's share is counted in hundredths of a per cent
MAX_STAGES = 20
PERCENT_RE = re.compile(r"^\s*(\d{1,3}(?:\.\d{1,2})?)\s*%\s*$")
DEFAULT_WAIT = dt.timedelta(hours=1)


def bucket(slug: str, account_id: str) -> int:
    """The account's bucket in [0, BUCKETS) for the campaign `slug` (a slug has no `:`, so the key is unambiguous)."""
    digest = hashlib.sha256(f"{slug}:{account_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


@dataclass(frozen=True)
class Stage:
    number: int  # 1-based
    percent: str  # as written, normalised: "1%", "12.5%", "100%"
    upto: int  # its accounts are those whose bucket is below this (cumulative: every earlier stage's too)


@dataclass(frozen=True)
class Rollout:
    """The flip's stages, `stage_wait` between two, and the guards checked before each next stage (None: off)."""

    stages: tuple[Stage, ...] = (Stage(1, "100%", BUCKETS),)
    stage_wait: dt.timedelta = DEFAULT_WAIT
    halt_on_conflict_rate: float | None = None  # of the stage's changes: the service said the device changed
    halt_on_error_rate: float | None = None  # of the stage's requests: no usable answer after retries, a refusal
    halt_on_complaints: int | None = None  # complaints taken in since the stage began

    @property
    def staged(self) -> bool:
        """More than one stage: the flip keeps its stages, their events and guards. One is today's flip."""
        return len(self.stages) > 1

    def stage(self, number: int) -> Stage:
        return self.stages[number - 1]

    def stage_of(self, b: int) -> int:
        """The stage of a bucket."""
        return next(s.number for s in self.stages if b < s.upto)


def step_name(number: int) -> str:
    """The scheduler's step of a stage: `flip` (the first, at the cutoff), then `flip:2`, `flip:3`, …"""
    return "flip" if number == 1 else f"flip:{number}"


class Checker(Protocol):
    """What parsing a table needs of `campaign.definition`'s checker: type-check its keys, report a problem."""

    def take(self, data: dict[str, Any], table: str, allowed: Mapping[str, type | tuple[type, ...]],
             required: tuple[str, ...] = (), index: int | None = None) -> dict[str, Any]: ...

    def fail(self, table: str, key: str | None, message: str, index: int | None = None) -> None: ...


def parse(c: Checker, raw: dict[str, Any]) -> Rollout:
    """`[flip]`: every problem reported to `c` with its key (and so its line); the default where a key is missing."""
    f = c.take(raw, "flip", {"stages": list, "stage_wait": str, "halt_on_conflict_rate": (int, float),
                             "halt_on_error_rate": (int, float), "halt_on_complaints": int})
    stages = _stages(c, f["stages"]) if "stages" in f else Rollout.stages
    wait = _wait(c, f.get("stage_wait"))
    rates: dict[str, float] = {}
    for key in ("halt_on_conflict_rate", "halt_on_error_rate"):
        if key in f:
            if 0 < f[key] <= 1:
                rates[key] = float(f[key])
            else:
                c.fail("flip", key, f"must be above 0 and at most 1 (a share: 0.05 is 5 %), not {f[key]!r}")
    complaints = f.get("halt_on_complaints")
    if complaints is not None and complaints < 1:
        c.fail("flip", "halt_on_complaints", f"must be 1 or more (the complaints that halt the flip), not {complaints}")
    return Rollout(stages, wait, rates.get("halt_on_conflict_rate"), rates.get("halt_on_error_rate"), complaints)


def _wait(c: Checker, value: str | None) -> dt.timedelta:
    """`stage_wait`, a duration such as "2h"; DEFAULT_WAIT when it is not given (or is not one)."""
    try:
        return DEFAULT_WAIT if value is None else parse_duration(value)
    except ValueError as exc:
        c.fail("flip", "stage_wait", str(exc))
        return DEFAULT_WAIT


def _stages(c: Checker, values: list[Any]) -> tuple[Stage, ...]:
    """`["1%", "10%", "100%"]`: shares of the devices, strictly growing, the last 100 %."""
    if not values or len(values) > MAX_STAGES:
        c.fail("flip", "stages", f"must list 1 to {MAX_STAGES} shares, such as [\"1%\", \"10%\", \"100%\"]")
        return Rollout.stages
    out: list[Stage] = []
    for value in values:
        m = PERCENT_RE.match(value) if isinstance(value, str) else None
        upto = round(float(m.group(1)) * 100) if m else 0
        if m is None or not 0 < upto <= BUCKETS:
            c.fail("flip", "stages", f"{value!r} is not a share such as \"1%\" or \"12.5%\" (above 0 %, at most "
                                     "100 %, at most two decimals)")
            return Rollout.stages
        if out and upto <= out[-1].upto:
            c.fail("flip", "stages", f"{value!r} does not grow on {out[-1].percent!r}: each stage takes a larger "
                                     "share than the one before (the shares count everyone so far)")
            return Rollout.stages
        out.append(Stage(len(out) + 1, f"{upto / 100:g}%", upto))
    if out[-1].upto != BUCKETS:
        c.fail("flip", "stages", f"the last stage is {out[-1].percent!r}: it must be \"100%\" (everyone), or the flip "
                                 "would never reach the others")
        return Rollout.stages
    return tuple(out)
