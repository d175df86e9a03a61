"""Where a key is in TOML text: tomllib gives values, not positions, and every message about a file we read (a
campaign definition, campaign.toml) names the line."""

from __future__ import annotations

import re


class Locator:
    """Finds the line of a key in TOML text (tomllib gives values, not positions)."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(?:#.*)?$")
    KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, int, str], int] = {}
        self.tables: dict[tuple[str, int], int] = {}
        table, index, counts = "", 0, {}  # type: ignore[var-annotated]
        for n, line in enumerate(text.splitlines(), start=1):
            m = self.HEADER.match(line)
            if m:
                table = m.group(2).strip().strip("\"'")
                if m.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self.tables.setdefault((table, index), n)
                continue
            k = self.KEY.match(line)
            if k:
                self.lines.setdefault((table, index, k.group(1).strip("\"'")), n)

    def line(self, table: str, key: str | None, index: int = 0) -> int:
        if key is not None and (table, index, key) in self.lines:
            return self.lines[(table, index, key)]
        return self.tables.get((table, index), 0)
