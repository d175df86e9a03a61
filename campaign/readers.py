"""Streaming readers for CSV and JSON Lines input, yielding records with their line numbers.

CSV: UTF-8 with or without BOM, LF or CRLF, RFC 4180 quoting (fields may hold commas, quotes and line
breaks); the header is line 1 and a record is numbered by the line it starts on. JSON Lines: one object
per line. Neither holds more than one record in memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import IO, Any

from campaign.errors import InputError, Problem


class _BadBytes(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


@dataclass
class Record:
    line: int
    values: dict[str, str]
    problem: str | None = None  # a record that could not be read into values at all


def detect_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".txt"):
        return "csv"
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def _decoded(fh: IO[bytes]) -> Iterator[str]:
    for n, raw in enumerate(fh, start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _BadBytes(n) from None


class RecordReader:
    """Opens PATH and iterates its records; `columns` is known after the header (CSV) or the first
    record (JSON Lines). Raises InputError for an unreadable file or one that is not UTF-8."""

    def __init__(self, path: Path | str, fmt: str | None = None) -> None:
        self.path = Path(path)
        try:
            self._fh: BufferedReader = self.path.open("rb")
        except OSError as exc:
            raise InputError(str(self.path), [Problem(0, f"cannot read: {exc.strerror or exc}")]) from None
        self.format = fmt or detect_format(self.path, self._fh.peek(64)[:64])
        self.columns: list[str] | None = None
        self.bytes_total = self.path.stat().st_size

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_read(self) -> int:
        try:
            return self._fh.tell()
        except (OSError, ValueError):
            return 0

    def header(self) -> list[str]:
        """CSV: read and return the header (line 1). JSON Lines: []."""
        if self.format != "csv":
            return []
        self._lines = _decoded(self._fh)
        self._csv = csv.reader(self._lines, strict=True)
        try:
            row = next(self._csv)
        except StopIteration:
            raise InputError(str(self.path), [Problem(1, "the file is empty; expected a header line")]) \
                from None
        except _BadBytes as exc:
            raise InputError(str(self.path), [Problem(exc.line, "not UTF-8 text")]) from None
        except csv.Error as exc:
            raise InputError(str(self.path), [Problem(1, f"malformed CSV header: {exc}")]) from None
        self.columns = [c.strip() for c in row]
        return self.columns

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from (self._csv_records() if self.format == "csv" else self._jsonl_records())
        except _BadBytes as exc:
            raise InputError(str(self.path), [Problem(exc.line, "not UTF-8 text")]) from None

    def _csv_records(self) -> Iterator[Record]:
        if self.columns is None:
            self.header()
        assert self.columns is not None
        columns = self.columns
        width = len(columns)
        reader = self._csv
        last = reader.line_num
        while True:
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # The reader cannot resynchronize after broken quoting: report and stop here.
                yield Record(start, {}, f"malformed CSV: {exc}")
                return
            last = reader.line_num
            if not row:  # a blank line
                continue
            if len(row) != width:
                yield Record(start, {}, f"expected {width} fields as in the header, found {len(row)}")
                continue
            yield Record(start, dict(zip(columns, row, strict=True)))

    def _jsonl_records(self) -> Iterator[Record]:
        for n, text in enumerate(_decoded(self._fh), start=1):
            if not text.strip():
                continue
            try:
                obj: Any = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Record(n, {}, f"not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield Record(n, {}, "expected a JSON object on each line")
                continue
            values: dict[str, str] = {}
            bad = None
            for key, value in obj.items():
                if isinstance(value, dict) and key == "settings":
                    for skey, svalue in value.items():
                        if not isinstance(svalue, str | int | float) or isinstance(svalue, bool):
                            bad = f"settings.{skey}: expected a string"
                        values[str(skey)] = str(svalue)
                    continue
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    bad = f"{key}: expected a string, found {type(value).__name__}"
                    continue
                values[str(key)] = str(value)
            yield Record(n, values, bad)
