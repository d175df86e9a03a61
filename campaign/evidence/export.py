"""`campaign report SLUG`: the evidence of every account — each wave's state, time, Message-ID and error, and
each device's change — streamed as CSV or JSON Lines in account order; or the HTML report
(`campaign.evidence.htmlreport`)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, outfiles
from campaign.errors import UsageError
from campaign.evidence import htmlreport
from campaign.evidence.words import HELD_BACK_WHY, WAITING_WHY
from campaign.store import campaigns as campaign_store
from campaign.store import evidence

FORMATS = ("csv", "jsonl", "html")


@dataclass
class Written:
    """What `report` wrote: accounts and rows (an account has a row per device in CSV), and where."""

    campaign: str
    format: str
    accounts: int = 0
    rows: int = 0
    path: str | None = None


def csv_header(wave_names: list[str]) -> list[str]:
    """The CSV report's columns: the account, five per wave (`notice_state`, `notice_at`, …,
    `notice_delivered_at`: when the recipient's server accepted it, as the mail provider reported), the device."""
    return [*evidence.ACCOUNT_COLUMNS, *(f"{w}_{c}" for w in wave_names for c in evidence.WAVE_COLUMNS),
            *evidence.DEVICE_COLUMNS]


# A spreadsheet takes a cell that begins with one of these for a formula (OWASP, "CSV Injection"), also after
# blanks (an import may trim them). A cell that begins with an apostrophe gets one more, so that every cell of
# the report that starts with one had it put there: dropping it gives the value back.
FORMULA_START = frozenset("=+-@")
QUOTED_START = FORMULA_START | frozenset("\t\r'")


def csv_cell(value: str | None) -> str | None:
    """A cell as a spreadsheet must read it: as text. One whose text could start a formula (`=`, `+`, `-`, `@`,
    a tab or a carriage return first, or `=`, `+`, `-`, `@` after blanks) or that starts with an apostrophe
    gets a leading apostrophe; the rest, times and states among them, are written as they are."""
    if value and (value[0] in QUOTED_START or (value[0].isspace() and value.lstrip()[:1] in FORMULA_START)):
        return "'" + value
    return value


STEP_ROWS = 1000  # rows written between two chunks of a streamed report


def _write_csv(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> None:
    for _ in _csv_steps(out, rows, wave_names, written):
        pass


def _csv_steps(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> Iterator[None]:
    """Write the CSV to `out`, pausing (a yield) every STEP_ROWS rows: a stream takes what was written so far."""
    writer = csv.writer(out)
    writer.writerow(csv_header(wave_names))
    write = writer.writerow
    cell, quoted = csv_cell, QUOTED_START
    account_id = evidence.account_columns(len(wave_names)).account_id
    last: str | None = None
    accounts = count = 0
    for r in rows:  # the store gives each row as it is written: text, in column order
        for v in r:  # most rows have no cell csv_cell would change: a look at first characters says so
            if v and (v[0] in quoted or v[0].isspace()):
                write([cell(v) for v in r])
                break
        else:
            write(r)
        count += 1
        if r[account_id] != last:
            accounts += 1
            last = r[account_id]
        if count % STEP_ROWS == 0:
            written.accounts, written.rows = accounts, count
            yield
    written.accounts, written.rows = accounts, count


def _write_jsonl(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> None:
    for _ in _jsonl_steps(out, rows, wave_names, written):
        pass


def _jsonl_steps(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> Iterator[None]:
    """Write the JSON Lines to `out`, pausing (a yield) every STEP_ROWS accounts."""
    columns = evidence.account_columns(len(wave_names))
    waves = list(zip(wave_names, columns.waves, strict=True))
    current: dict[str, Any] | None = None
    accounts = 0
    for r in rows:
        if current is None or r[columns.account_id] != current["account_id"]:
            if current is not None:
                out.write(json.dumps(current, ensure_ascii=False) + "\n")
                if accounts % STEP_ROWS == 0:
                    yield
            accounts += 1
            account_id, email, locale, timezone = r[columns.account]
            by_wave = {}
            for name, wave in waves:
                state, at, message_id, error, delivered_at, sha256 = r[wave]
                by_wave[name] = {"state": state, "at": at, "message_id": message_id, "error": error,
                                 "delivered_at": delivered_at, "message_sha256": sha256}
            current = {"account_id": account_id, "email": email, "locale": locale, "timezone": timezone,
                       "waves": by_wave, "devices": []}
        device_id, frm, to, change, flipped, rolled, held, why, due, note = r[columns.device]
        if device_id is not None:
            current["devices"].append({
                "device_id": device_id, "from": frm, "to": to, "flipped_at": flipped, "rolled_back_at": rolled,
                "held_back": held == "true", "state": change, "held_back_why": why, "due_at": due, "note": note})
    if current is not None:
        out.write(json.dumps(current, ensure_ascii=False) + "\n")
    written.accounts = written.rows = accounts


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} (expected {', '.join(FORMATS)})")


def write_report(conn: Connection, slug: str, fmt: str, out: TextIO, now: dt.datetime | None = None) -> Written:
    """Write the campaign's report in `fmt` to `out`. CSV and JSON Lines stream every account of the campaign
    (a ledger row or a change row) in account order; HTML is one self-contained page."""
    _check_format(fmt)
    c = campaigns.get(conn, slug)
    written = Written(slug, fmt)
    if fmt == "html":
        out.write(htmlreport.render(htmlreport.html_data(conn, slug, now)))
        return written
    waves = campaign_store.waves(conn, c.id)
    rows = evidence.account_rows(conn, c.id, [w.id for w in waves], HELD_BACK_WHY, WAITING_WHY)
    names = [w.name for w in waves]
    if fmt == "csv":
        _write_csv(out, rows, names, written)
    else:
        _write_jsonl(out, rows, names, written)
    return written


def stream(engine: Engine, slug: str, fmt: str) -> Iterator[str]:
    """The report in `fmt` as chunks of text, each taken as it is written (the console streams them): nothing is
    held whole but the HTML page. An unknown campaign or format raises before the first chunk."""
    _check_format(fmt)
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        if fmt == "html":
            yield htmlreport.render(htmlreport.html_data(conn, slug))
            return
        buffer = io.StringIO()
        waves = campaign_store.waves(conn, c.id)
        rows = evidence.account_rows(conn, c.id, [w.id for w in waves], HELD_BACK_WHY, WAITING_WHY)
        steps = _csv_steps if fmt == "csv" else _jsonl_steps
        for _ in steps(buffer, rows, [w.name for w in waves], Written(slug, fmt)):
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()


def report(engine: Engine, slug: str, fmt: str, out: Path | None, stdout: TextIO) -> Written:
    """`campaign report SLUG --format F [--out FILE]`: to FILE, else to `stdout` (also when FILE leads to it:
    `--out /dev/stdout`). A regular file is written whole or not at all; a FIFO or a character device is written
    through; a link, a directory and the rest are refused (`campaign.outfiles`)."""
    if out is not None and outfiles.same_file(out, stdout):
        out = None
    with db.read(engine) as conn:
        if out is None:
            return write_report(conn, slug, fmt, stdout)
        _check_format(fmt)  # an unknown format or campaign is said as such before a FIFO is waited for
        campaigns.get(conn, slug)
        with outfiles.text(out) as f:
            written = write_report(conn, slug, fmt, f)
    written.path = str(out)
    return written
