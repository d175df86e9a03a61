"""Waiting for events, not for time: a condition polled until a deadline, what a logger said, what a process
writes to its log file.

A test that sleeps and then looks ("three seconds later it is still running") proves little on a loaded machine
and costs the sleep on an idle one. Here a test waits for the event itself; for a negative — X has not happened —
it waits for an event that comes after the point where X would have happened (the process's next log line, a
row, another process's progress), then looks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "") -> T:
    """`predicate()` called every `interval` seconds until it returns something true, which is returned; a
    failure naming `what` once `timeout` seconds have passed (the deadline is generous: reaching it is a bug)."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


@contextmanager
def logged(name: str = "campaign", level: int = logging.DEBUG) -> Iterator[list[str]]:
    """The messages that logger `name` (and those below it) emits meanwhile, from any thread, as they come."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger(name), Keep(level)
    was = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(was)


class LogFile:
    """A file a child process writes its log to (its stderr, say), read while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8", errors="replace")

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def wait_for(self, needle: str, times: int = 1, timeout: float = 120) -> None:
        """Until `needle` has appeared `times` times in all."""
        wait_until(lambda: self.count(needle) >= times, timeout, what=f"{needle!r} {times} time(s) in {self.path}")
