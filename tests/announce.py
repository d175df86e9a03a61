"""`python -m tests.announce ARGS…`: `python -m campaign ARGS…`, writing `announce: STATEMENT` to stderr (flushed)
just before the database is sent each statement that the regular expression in CAMPAIGN_TEST_ANNOUNCE finds.

A test waits for that line to know that the command has reached the statement — one that waits for a lock the
test holds, say — rather than sleeping and hoping it has."""

from __future__ import annotations

import os
import re
import runpy
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

PATTERN = re.compile(os.environ["CAMPAIGN_TEST_ANNOUNCE"])


@event.listens_for(Engine, "before_cursor_execute")
def _announce(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if PATTERN.search(statement):
        print(f"announce: {' '.join(statement.split())}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    runpy.run_module("campaign", run_name="__main__", alter_sys=True)
