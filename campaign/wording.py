"""Words for people: figures said the way a product manager reads them (durations, counts)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def duration(seconds: float) -> str:
    """A duration in the two largest units that say it: '4 days', '2 days 6 hours', '90 minutes', '45 seconds'."""
    whole = round(abs(seconds))
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    parts = []
    for name, size in units:
        n, whole = divmod(whole, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
        if len(parts) == 2 or (parts and not n):
            break
    return " ".join(parts) or "0 seconds"


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' — did you mean `X`?' for the known word closest to a misspelt one (case aside), or ''."""
    by_folded = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.75)
    return f" — did you mean `{by_folded[close[0]]}`?" if close else ""
