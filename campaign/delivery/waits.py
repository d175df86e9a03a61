"""How long the database held a send up: the worker's tasks that wait on it, clocked (`Waits`), and the event
loop's selector that counts the time the loop sat idle while one of them did (`IdleClock`)."""

from __future__ import annotations

import selectors
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["IdleClock", "Waits"]

T = TypeVar("T")


@dataclass
class Waits:
    """A worker's waits on the database."""

    on_db: int = 0  # tasks waiting on the database now (see `IdleClock`)
    claims: float = 0.0  # the loop waiting for a claim, or a look at the wave
    commits: float = 0.0  # connections waiting at the gate for earlier commits, summed over them

    async def waited(self, aw: Awaitable[T]) -> T:
        """`aw`, awaited by the loop itself, clocked as a wait for a claim."""
        start = time.perf_counter()
        self.on_db += 1
        try:
            return await aw
        finally:
            self.on_db -= 1
            self.claims += time.perf_counter() - start


class IdleClock(selectors.DefaultSelector):
    """A worker's event-loop selector that clocks how long the loop sat idle — nothing to do but wait — while
    some task of the send waited on the database (`Waits.on_db`): the time the database held the send up.
    A task waiting on the database while the loop is busy with others costs the send nothing."""

    def __init__(self, waits: Waits) -> None:
        super().__init__()
        self.waits = waits
        self.held = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self.waits.on_db or timeout == 0:  # a timeout of 0: the loop has work ready, it only polls
            return super().select(timeout)
        start = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.held += time.perf_counter() - start
