"""What every output of the evidence says the same way: a time as ISO 8601, and why a device was held back."""

from __future__ import annotations

import datetime as dt

from campaign.models import HELD_BACK, WAITING

HELD_BACK_WHY = "no delivered notice"
WAITING_WHY = "waiting for fair notice"


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def why(state: str | None, due_at: dt.datetime | None) -> str | None:
    """Why a device was held back, in words: no delivered notice, or fair notice until when."""
    if state == HELD_BACK:
        return HELD_BACK_WHY
    if state == WAITING:
        return f"{WAITING_WHY} until {iso(due_at)}" if due_at else WAITING_WHY
    return None
