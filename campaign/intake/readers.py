"""Streaming readers for CSV and JSON Lines input, yielding records with their line numbers.

CSV: UTF-8 with or without BOM, LF or CRLF, RFC 4180 quoting (fields may hold commas, quotes and line
breaks); the header is line 1 and a record is numbered by the line it starts on. JSON Lines: one object
per line. Neither holds more than one record in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import InputError, Problem


@dataclass
class Record:
    """One record: `fields` in the header's order (CSV) or `values` by key (JSON Lines)."""

    line: int
    fields: list[str] = field(default_factory=list)
    values: dict[str, str] | None = None
    problem: str | None = None  # a record that could not be read at all

    def as_dict(self, columns: list[str]) -> dict[str, str]:
        return self.values if self.values is not None else dict(zip(columns, self.fields, strict=False))


def detect_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".txt"):
        return "csv"
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def first_bad_utf8_line(path: Path) -> int:
    """The line holding the first byte sequence that is not UTF-8 (decoding found one somewhere)."""
    line = 1
    with path.open("rb") as fh:
        for raw in fh:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
            line += 1
    return line


class RecordReader:
    """Opens PATH and iterates its records. Raises InputError for an unreadable file or one that is
    not UTF-8 (naming the line)."""

    def __init__(self, path: Path | str, fmt: str | None = None, text_keys: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.text_keys = frozenset(text_keys)  # JSON Lines: keys whose values must be JSON strings
        try:
            self._raw = self.path.open("rb")
        except OSError as exc:
            raise InputError(str(self.path), [Problem(0, f"cannot read: {exc.strerror or exc}")]) from None
        self.format = fmt or detect_format(self.path, self._raw.peek(64)[:64])
        self.bytes_total = self.path.stat().st_size
        # The C decoder reads far faster than decoding line by line; a decoding error is located
        # afterwards by a second, rare pass.
        self._text = io.TextIOWrapper(self._raw, encoding="utf-8-sig", newline="")
        self._csv: Any = None
        self.columns: list[str] = []

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_read(self) -> int:
        """How far into the file reading has come; all of it once the file is closed (read to its end: the last
        progress line of an import said 0 %)."""
        if self._raw.closed:
            return self.bytes_total
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def _bad_bytes(self) -> InputError:
        return InputError(str(self.path), [Problem(first_bad_utf8_line(self.path), "not UTF-8 text")])

    def header(self) -> list[str]:
        """CSV: read and return the header (line 1). JSON Lines: []."""
        if self.format != "csv":
            return []
        self._csv = csv.reader(self._text, strict=True)
        try:
            row = next(self._csv)
        except StopIteration:
            raise InputError(str(self.path), [Problem(1, "the file is empty; expected a header line")]) \
                from None
        except UnicodeDecodeError:
            raise self._bad_bytes() from None
        except csv.Error as exc:
            raise InputError(str(self.path), [Problem(1, f"malformed CSV header: {exc}")]) from None
        self.columns = [c.strip() for c in row]
        return self.columns

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from (self._csv_records() if self.format == "csv" else self._jsonl_records())
        except UnicodeDecodeError:
            raise self._bad_bytes() from None

    def _csv_records(self) -> Iterator[Record]:
        for line, row in self.csv_rows():
            yield Record(line, problem=row) if isinstance(row, str) else Record(line, row)

    def csv_rows(self) -> Iterator[tuple[int, list[str] | str]]:
        """CSV records as (line, fields), or (line, problem) for one that cannot be read: the fast path."""
        if self._csv is None:
            self.header()
        width = len(self.columns)
        reader = self._csv
        last = reader.line_num
        try:
            while True:
                start = last + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    # The reader cannot resynchronize after broken quoting: report and stop here.
                    yield start, f"malformed CSV: {exc}"
                    return
                last = reader.line_num
                if len(row) != width:
                    if not row:  # a blank line
                        continue
                    yield start, f"expected {width} fields as in the header, found {len(row)}"
                    continue
                yield start, row
        except UnicodeDecodeError:
            raise self._bad_bytes() from None

    def _jsonl_records(self) -> Iterator[Record]:
        text_keys = self.text_keys
        for n, text in enumerate(self._text, start=1):
            if not text.strip():
                continue
            try:
                obj: Any = json.loads(text, object_pairs_hook=_object)
            except json.JSONDecodeError as exc:
                yield Record(n, problem=f"not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            except _RepeatedKey as exc:
                yield Record(n, problem=f"the key {exc.key!r} appears twice in one object")
                continue
            except RecursionError:
                yield Record(n, problem="not valid JSON: nested too deeply")
                continue
            if not isinstance(obj, dict):
                yield Record(n, problem="expected a JSON object on each line")
                continue
            values: dict[str, str] = {}
            bad = None
            for key, value in obj.items():
                if isinstance(value, dict) and key == "settings":
                    for skey, svalue in value.items():
                        if isinstance(svalue, bool) or not isinstance(svalue, str | int | float):
                            bad = f"settings.{skey}: expected a string"
                        values[str(skey)] = str(svalue)
                    continue
                if value is None:
                    continue
                if key in text_keys and not isinstance(value, str):
                    bad = f"{key}: expected a string, found {_json_type(value)}"
                    continue
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    bad = f"{key}: expected a string, found {_json_type(value)}"
                    continue
                values[str(key)] = str(value)
            yield Record(n, values=values, problem=bad)


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key appears twice (json.loads would keep the last one silently)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _json_type(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)
