"""The figures of the console's pages that scan the ledger (`status.Counted`): shown at once, counted again in the
background.

At a million accounts a campaign's counts (deliveries by state, notice coverage, the flip's changes) take seconds to
read; the rest of a page — state, waves, approval, steps, preflight, audit log — takes milliseconds, and is read at
every request, so an action shows at once. The counts are shown as last counted, with their time on the page, and
counted again in the background once SNAPSHOT_SECONDS old: never two counts of a campaign at once in a process, and
the count is kept in the database (`count_snapshot`), so a restarted console shows the last count at once and the
processes behind one balancer share one count instead of each making its own. A campaign never counted by anyone
is waited for a moment at most (its page then says its first count is under way); `campaign serve` counts every
campaign when it starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from campaign.clock import utcnow
from campaign.evidence import overview, status
from campaign.redaction import redact

log = logging.getLogger("campaign.console")

SNAPSHOT_SECONDS = 15.0  # how old a page's counts may be before they are counted again


@dataclass
class _Held:
    counted: status.Counted
    taken: float  # time.monotonic() when this process counted or adopted it


@dataclass
class Counts:
    """Each campaign's last count, by slug, for one console process."""

    engine: Engine
    ttl: float = SNAPSHOT_SECONDS
    _held: dict[str, _Held] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _refreshing: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def get(self, slug: str, wait: float | None = None) -> status.Counted | None:
        """The campaign's last count (a count in the background begun when it is old). Never counted by anyone:
        the first count begins, and is waited for — `wait` seconds at most (then None), or as long as it takes
        (`wait=None`)."""
        held = self._held.get(slug)
        if held is None and not self._lock(slug).locked():
            async with self._lock(slug):
                held = self._held.get(slug)
                if held is None:
                    kept = await run_in_threadpool(status.kept_count, self.engine, slug)
                    if kept is not None:
                        held = self._hold(slug, kept)
                        if self._age(kept) >= self.ttl:  # kept long ago (a restart): shown, and counted again
                            self.refresh(slug)
        if held is None:
            self.refresh(slug)
            if wait is None:
                await asyncio.shield(self._refreshing[slug])
            elif wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._refreshing[slug]), wait)
            held = self._held.get(slug)
            return None if held is None else held.counted
        if time.monotonic() - held.taken >= self.ttl:
            self.refresh(slug)
        return held.counted

    async def every(self) -> dict[str, status.Counted | None]:
        """Every campaign's last count, by slug, waiting for none (None: its first count is under way)."""
        return {slug: await self.get(slug, wait=0) for slug in await run_in_threadpool(overview.slugs, self.engine)}

    def refresh(self, slug: str) -> None:
        """Count the campaign again in the background, unless a count of it is under way already."""
        if slug not in self._refreshing:
            self._refreshing[slug] = asyncio.create_task(self._refresh(slug))

    async def warm(self, slugs: list[str]) -> None:
        """Have a count of each campaign (at start: the first page then waits for none)."""
        for slug in slugs:
            try:
                await self.get(slug)
            except Exception as exc:  # a page will say it; starting goes on
                log.warning("console: counting %s failed: %s", slug, redact(str(exc)))

    async def _refresh(self, slug: str) -> None:
        try:
            async with self._lock(slug):
                held = self._held.get(slug)
                kept = await run_in_threadpool(status.kept_count, self.engine, slug)
                # Another process counted since this one did, and recently: its count is taken, not made again.
                if kept is not None and (held is None or kept.at > held.counted.at) and self._age(kept) < self.ttl:
                    self._hold(slug, kept)
                else:
                    self._hold(slug, await run_in_threadpool(status.count_and_keep, self.engine, slug))
        except Exception as exc:  # the last count stays, with its time on the page
            log.warning("console: counting %s again failed: %s", slug, redact(str(exc)))
        finally:
            self._refreshing.pop(slug, None)

    def _hold(self, slug: str, counted: status.Counted) -> _Held:
        held = self._held[slug] = _Held(counted, time.monotonic())
        return held

    def _lock(self, slug: str) -> asyncio.Lock:
        return self._locks.setdefault(slug, asyncio.Lock())

    @staticmethod
    def _age(counted: status.Counted) -> float:
        """Seconds since the count was taken, by this process's clock (a count from the future is taken as old:
        a process with another clock made it)."""
        age = (utcnow() - counted.at).total_seconds()
        return age if age >= 0 else float("inf")


__all__ = ["SNAPSHOT_SECONDS", "Counts"]
