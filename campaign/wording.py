"""Words for people: figures said the way a product manager reads them (durations, counts)."""

from __future__ import annotations


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
