"""Importing accounts and devices (streamed, validated, all or nothing) and selecting the audience.

An import goes through a staging table inside one write transaction: the file is streamed in batches
into the stage, checks that need the whole file (duplicate ids, unknown accounts) run as SQL, and the
upsert is one set-based statement per table. Memory stays flat whatever the file size; any problem
rolls everything back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db
from campaign.addresses import normalize as normalize_address
from campaign.errors import MAX_SHOWN, InputError, Problem
from campaign.intake.readers import RecordReader
from campaign.store import people
from campaign.validation import (
    MAX_SETTING_VALUE,
    check_timezone,
    normalize_country,
    normalize_locale,
    setting_value_problem,
    unprintable,
    unprintable_in,
)

BATCH = 5000
ACCOUNT_COLUMNS = ("account_id", "email", "name", "locale", "timezone", "country")
DEVICE_COLUMNS = ("device_id", "account_id", "name", "model")
SETTING_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Progress = Callable[[int, int, int], None]  # (records, bytes read, bytes total)


@dataclass
class ImportResult:
    path: str
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    settings_changed: int = 0
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Problems:
    first: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, line: int, message: str) -> None:
        self.total += 1
        if len(self.first) < MAX_SHOWN:
            self.first.append(Problem(line, message))

    def merge(self, problems: Iterable[Problem], count: int) -> None:
        self.first = sorted([*self.first, *problems])[:MAX_SHOWN]
        self.total += count


class _Lookup:
    """Memoized check of a value that repeats across rows (locale, time zone, country):
    maps the raw text to its normalized form, or to the message of why it is refused."""

    def __init__(self, check: Callable[[str], str]) -> None:
        self.check = check
        self.known: dict[str, tuple[str, str | None]] = {}

    def __call__(self, raw: str) -> tuple[str, str | None]:
        hit = self.known.get(raw)
        if hit is None:
            try:
                hit = (self.check(raw.strip()), None)
            except ValueError as exc:
                hit = ("", str(exc))
            if len(self.known) < 100_000:
                self.known[raw] = hit
        return hit


def _text_problem(key: str, value: str, limit: int) -> str | None:
    if not value or value.isspace():
        return f"{key}: must not be empty"
    problem = unprintable(value)
    if problem:
        return f"{key}: must be one printable line ({problem})"
    if len(value) > limit:
        return f"{key}: longer than {limit} characters"
    return None


def _valid_id(value: str) -> bool:
    """1 to 128 printable characters without spaces (the import loops inline this check)."""
    return 0 < len(value) <= 128 and value.isprintable() and " " not in value


def _id_problem(key: str, value: str) -> str | None:
    if _valid_id(value):
        return None
    if not value:
        return f"{key}: must not be empty"
    return f"{key}: {value!r} is not an id (1 to 128 characters, no spaces or control characters)"


def _check_columns(columns: Iterable[str], required: tuple[str, ...],
                   extra_ok: Callable[[str], bool], line: int = 1) -> list[Problem]:
    cols = list(columns)
    problems = []
    missing = [c for c in required if c not in cols]
    if missing:
        problems.append(Problem(line, f"missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"))
    unknown = [c for c in cols if c not in required and not extra_ok(c)]
    if unknown:
        problems.append(Problem(line, f"unknown column{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                                      f"(expected {', '.join(required)})"))
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        problems.append(Problem(line, f"repeated column: {', '.join(dup)}"))
    return problems


def _duplicates(conn: Connection, stage_table: Any, what: str) -> tuple[list[Problem], int]:
    rows, count = people.duplicates(conn, stage_table, MAX_SHOWN)
    return [Problem(line, f"{what} {ident!r} appears again (first at line {first})")
            for line, ident, first in rows], count


def import_accounts(engine: Engine, path: Path | str, actor: str, dry_run: bool = False,
                    progress: Progress | None = None) -> ImportResult:
    """Upsert the accounts of a CSV or JSON Lines file; all or nothing."""
    path = Path(path)
    result = _Import(engine, path, actor, dry_run, progress)
    return result.run_accounts()


def import_devices(engine: Engine, path: Path | str, actor: str, dry_run: bool = False,
                   progress: Progress | None = None) -> ImportResult:
    """Upsert devices and their settings; a changed setting value is recorded as the person's own."""
    path = Path(path)
    result = _Import(engine, path, actor, dry_run, progress)
    return result.run_devices()


class _Import:
    def __init__(self, engine: Engine, path: Path, actor: str, dry_run: bool,
                 progress: Progress | None) -> None:
        self.engine, self.path, self.actor, self.dry_run = engine, path, actor, dry_run
        self.progress = progress
        self.problems = _Problems()
        self.result = ImportResult(str(path), dry_run=dry_run)

    def _fail_if_problems(self) -> None:
        if self.problems.total:
            raise InputError(str(self.path), self.problems.first, self.problems.total)

    def _tick(self, reader: RecordReader) -> None:
        if self.progress is not None:
            self.progress(self.result.records, reader.bytes_read, reader.bytes_total)

    def _records(self, reader: RecordReader, header: list[str]) -> Iterator[tuple[int, Any]]:
        """(line, record) for each record that reads: a CSV row's fields, or a JSON Lines record (its
        `values`). Every record is counted; one that does not read is noted as a problem of its line."""
        add_problem = self.problems.add
        result = self.result
        if header:
            for line, fields in reader.csv_rows():
                result.records += 1
                if isinstance(fields, str):
                    add_problem(line, fields)
                else:
                    yield line, fields
        else:
            for item in reader:
                result.records += 1
                if item.problem:
                    add_problem(item.line, item.problem)
                else:
                    yield item.line, item

    # -- accounts ---------------------------------------------------------------------------------

    def run_accounts(self) -> ImportResult:
        locales, zones, countries = _Lookup(normalize_locale), _Lookup(check_timezone), _Lookup(normalize_country)
        known_locales, known_zones, known_countries = locales.known, zones.known, countries.known
        with RecordReader(self.path, text_keys=ACCOUNT_COLUMNS) as reader, \
                self._transaction("import.accounts") as tx:
            conn = tx.conn
            header = reader.header()
            if header:
                self._header_problems(_check_columns(header, ACCOUNT_COLUMNS, lambda c: False))
                fields_of = itemgetter(*(header.index(c) for c in ACCOUNT_COLUMNS))
            people.prepare(conn)
            stage = people.account_stage()
            people.create_stage(conn, stage)
            batch: list[tuple[Any, ...]] = []
            add_problem = self.problems.add
            for line, item in self._records(reader, header):
                if header:
                    ident, email, name, locale, tz, country = fields_of(item)
                else:
                    col_problems = _check_columns(item.values, ACCOUNT_COLUMNS, lambda c: False,
                                                  line)
                    if col_problems:
                        add_problem(line, "; ".join(p.message for p in col_problems))
                        continue
                    ident, email, name, locale, tz, country = (item.values[c] for c in ACCOUNT_COLUMNS)
                errs: list[str | None] = []
                ident, email, name = ident.strip(), email.strip(), name.strip()
                if not (0 < len(ident) <= 128 and ident.isprintable() and " " not in ident):
                    errs.append(_id_problem("account_id", ident))
                try:  # the stored (normalized) form; campaign.addresses has the fast path
                    email = normalize_address(email)
                except ValueError as exc:
                    errs.append(f"email: {exc}")
                if not name or len(name) > 256 or unprintable_in(name):
                    errs.append(_text_problem("name", name, 256))
                locale, msg = known_locales.get(locale) or locales(locale)
                if msg:
                    errs.append(f"locale: {msg}")
                tz, msg = known_zones.get(tz) or zones(tz)
                if msg:
                    errs.append(f"timezone: {msg}")
                country, msg = known_countries.get(country) or countries(country)
                if msg:
                    errs.append(f"country: {msg}")
                if errs:
                    add_problem(line, "; ".join(e for e in errs if e))
                    continue
                if not self.problems.total:
                    batch.append((line, ident, email, name, locale, tz, country))
                    if len(batch) >= BATCH:
                        people.stage(conn, stage, batch)
                        batch.clear()
                        self._tick(reader)
            if not self.problems.total:
                people.stage(conn, stage, batch)
            self._fail_if_problems()  # row problems first: stop before the whole-file checks
            self.problems.merge(*_duplicates(conn, stage, "account_id"))
            self._fail_if_problems()
            total, inserted, updated = people.account_counts(conn, stage)
            self.result.inserted, self.result.updated = inserted, updated
            self.result.unchanged = total - inserted - updated
            people.upsert_accounts(conn, stage, db.utcnow(), people.Counts(total, inserted, updated))
            people.drop_stage(conn, stage)
            tx.note(file=str(self.path), **self._counts())
        self._tick(reader)
        return self.result

    def _header_problems(self, problems: list[Problem]) -> None:
        if problems:
            raise InputError(str(self.path), problems)

    def _transaction(self, action: str) -> Any:
        return db.transaction(self.engine, self.actor, action, dry_run=self.dry_run, bulk=True)

    def _counts(self) -> dict[str, int]:
        r = self.result
        return {"records": r.records, "inserted": r.inserted, "updated": r.updated,
                "unchanged": r.unchanged, "settings_changed": r.settings_changed}

    # -- devices ----------------------------------------------------------------------------------

    def run_devices(self) -> ImportResult:
        # One staging row per device, its settings as extra columns s0, s1, … (keys in `keys`); a JSON
        # Lines file may bring a new key on any line, which adds a column.
        keys: list[str] = []
        with RecordReader(self.path, text_keys=DEVICE_COLUMNS) as reader, \
                self._transaction("import.devices") as tx:
            conn = tx.conn
            header = reader.header()
            setting_index: list[int] = []
            if header:
                problems = _check_columns(header, DEVICE_COLUMNS,
                                          lambda c: bool(SETTING_KEY_RE.match(c)))
                self._header_problems([Problem(p.line, p.message.replace(
                    "(expected", "(setting columns are lower-case names [a-z][a-z0-9_]*; expected"))
                    for p in problems])
                order = [header.index(c) for c in DEVICE_COLUMNS]
                keys = [c for c in header if c not in DEVICE_COLUMNS]
                setting_index = [header.index(k) for k in keys]
            people.prepare(conn)
            stage = people.device_stage(len(keys))
            people.create_stage(conn, stage)
            devices: list[Any] = []
            add_problem = self.problems.add

            def flush() -> None:
                people.stage(conn, stage, devices)
                devices.clear()

            o0, o1, o2, o3 = order if header else (0, 1, 2, 3)
            n_keys = len(keys)
            for line, item in self._records(reader, header):
                if header:
                    f = item
                    ident, account_id, name, model = f[o0].strip(), f[o1].strip(), f[o2].strip(), f[o3].strip()
                    raw = [f[i] for i in setting_index] if n_keys else []
                else:
                    # JSON Lines: the settings are the keys beyond the device's own.
                    values = item.values
                    row_errs = []
                    missing = [c for c in DEVICE_COLUMNS if c not in values]
                    if missing:
                        row_errs.append(f"missing {', '.join(missing)}")
                    bad = [k for k in values if k not in DEVICE_COLUMNS and not SETTING_KEY_RE.match(k)]
                    if bad:
                        row_errs.append(f"not a setting name: {', '.join(bad)} (use [a-z][a-z0-9_]*)")
                    if row_errs:
                        add_problem(line, "; ".join(row_errs))
                        continue
                    ident, account_id, name, model = (values[c].strip() for c in DEVICE_COLUMNS)
                    new_keys = [k for k in values if k not in DEVICE_COLUMNS and k not in keys]
                    if new_keys:
                        flush()
                        for k in new_keys:
                            stage = people.widen_device_stage(conn, len(keys))
                            keys.append(k)
                    raw = [values.get(k, "") for k in keys]
                    n_keys = len(keys)
                errs = None
                if not (0 < len(ident) <= 128 and 0 < len(account_id) <= 128 and ident.isprintable()
                        and account_id.isprintable() and " " not in ident and " " not in account_id):
                    errs = [m for m in (_id_problem("device_id", ident), _id_problem("account_id", account_id)) if m]
                if not name or not model or len(name) > 256 or len(model) > 256 or unprintable_in(name + model):
                    errs = (errs or []) + [m for m in (_text_problem("name", name, 256),
                                                       _text_problem("model", model, 256)) if m]
                row = [line, ident, account_id, name, model]
                if n_keys:
                    # The settings checked all at once (a joined text is printable when every part is); the
                    # value-by-value loop only to word a problem. An empty cell leaves the setting as it is.
                    cells = [value.strip() for value in raw]
                    if max(map(len, cells)) > MAX_SETTING_VALUE or not "".join(cells).isprintable():
                        errs = (errs or []) + [f"{keys[j]}: {setting_value_problem(value)}"
                                               for j, value in enumerate(cells)
                                               if value and (len(value) > MAX_SETTING_VALUE or not value.isprintable())]
                    row.extend([value or None for value in cells])
                if errs:
                    add_problem(line, "; ".join(errs))
                    continue
                if not self.problems.total:
                    devices.append(row)
                    if len(devices) >= BATCH:
                        flush()
                        self._tick(reader)
            if not self.problems.total:
                flush()
            self._fail_if_problems()
            self.problems.merge(*_duplicates(conn, stage, "device_id"))
            rows, count = people.unknown_accounts(conn, stage, MAX_SHOWN)
            self.problems.merge([Problem(line, f"account_id: no account {acc!r} (import accounts first)")
                                 for line, acc in rows], count)
            self._fail_if_problems()
            total, inserted, updated, changed = people.device_counts(conn, stage, keys)
            self.result.inserted, self.result.updated, self.result.settings_changed = inserted, updated, changed
            self.result.unchanged = total - inserted - updated
            people.upsert_devices(conn, stage, keys, db.utcnow(), people.Counts(total, inserted, updated), changed)
            people.drop_stage(conn, stage)
            tx.note(file=str(self.path), **self._counts())
        self._tick(reader)
        return self.result
