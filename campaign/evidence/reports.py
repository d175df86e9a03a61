"""Reports: a campaign's status (deliveries per wave, the flip); the evidence — every account's story as CSV or
JSON Lines, one person's whole story, the audit log — and the HTML report (`campaign.evidence.htmlreport` draws it)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, outfiles
from campaign.addresses import normalize as normalize_address
from campaign.cutoff import approval
from campaign.errors import NotFound, UsageError
from campaign.models import (
    APPLY_STATES,
    APPLYING,
    CHANGED,
    DELIVERY_STATES,
    HELD_BACK,
    LEFT,
    PENDING,
    ROLLED_BACK,
    UNDOING,
    UNKNOWN,
    WAITING,
)
from campaign.store import audit, deliveries, evidence, steps
from campaign.store import bounces as bounce_store
from campaign.store import campaigns as campaign_store
from campaign.store import changes as change_store
from campaign.store import reports as store
from campaign.store import suppressions as suppression_store
from campaign.validation import escape_controls

RATE_WINDOW = dt.timedelta(seconds=60)


def status(conn: Connection, slug: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """SPEC §6 `status --json`: per wave every delivery state (zeros included), the flip's counts; plus,
    beside them, each wave's state, pause reason, rate over the last minute and ETA."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    waves: dict[str, dict[str, int]] = {}
    detail: dict[str, dict[str, Any]] = {}
    for w in campaign_store.waves(conn, c.id):
        counts = deliveries.counts(conn, w.id)
        waves[w.name] = counts
        rate = store.sent_since(conn, w.id, now - RATE_WINDOW) / RATE_WINDOW.total_seconds()
        left = counts["pending"] + counts["sending"]
        detail[w.name] = {"state": w.state, "paused_reason": w.paused_reason, "at": w.at.isoformat(),
                          "rate_per_second": round(rate, 2),
                          "eta_seconds": round(left / rate) if rate > 0 and left else None}
    changes = store.change_counts(conn, c.id)
    waiting = changes.pop(WAITING)
    outlook = change_store.outlook(conn, c.id)
    flip_detail = {"waiting": waiting, "next_due": outlook.next_due.isoformat() if outlook.next_due else None,
                   "held_back": changes["held_back"], "held_back_why": outlook.held_back_why,
                   "rolled_back_at": c.rolled_back_at.isoformat() if c.rolled_back_at else None}
    if c.definition.apply.http:
        flip_detail["apply"] = _apply_status(conn, c, changes)
    return {"campaign": slug, "state": c.state, "cutoff": c.cutoff.isoformat(), "waves": waves,
            "flip": changes, "wave_detail": detail, "flip_detail": flip_detail,
            "next_step": _next_step(conn, c.id), "approval": _approval(conn, c)}


def _approval(conn: Connection, c: campaigns.CampaignRow) -> dict[str, Any]:
    """Who approved the definition, when, for which version and digest (`[approval]`), with a line in words."""
    s = approval.standing(conn, c)
    return {**s.as_json(), "words": s.words()}


def _apply_status(conn: Connection, c: campaigns.CampaignRow, changes: dict[str, int]) -> dict[str, Any]:
    """[apply] kind = "http": what the settings service applied and what waits for it (the apply states leave
    the `flip` counts, which stay those of SPEC §6)."""
    for state in APPLY_STATES:
        changes.pop(state, None)
    a = change_store.apply_state(conn, c.id)
    return {"kind": "http", "url": c.definition.apply.url, "applied": changes[CHANGED], "waiting": a.waiting,
            "undoing": a.undoing, "unknown_device": a.unknown, "batches_waiting": a.batches_waiting,
            "paused": a.paused, "last_error": a.last_error}


def _next_step(conn: Connection, campaign_id: int) -> dict[str, Any] | None:
    s = steps.next_step(conn, campaign_id)
    return None if s is None else {"step": s.name, "due_at": s.due_at.isoformat(), "state": s.state}


def status_of(engine: Engine, slug: str) -> dict[str, Any]:
    """`campaign status`."""
    with db.read(engine) as conn:
        return status(conn, slug)


# -- the evidence: every account -------------------------------------------------------------------------

FORMATS = ("csv", "jsonl", "html")
HELD_BACK_WHY = "no delivered notice"


@dataclass
class Written:
    """What `report` wrote: accounts and rows (an account has a row per device in CSV), and where."""

    campaign: str
    format: str
    accounts: int = 0
    rows: int = 0
    path: str | None = None


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _why(state: str | None, due_at: dt.datetime | None) -> str | None:
    """Why a device was held back, in words: no delivered notice, or fair notice until when."""
    if state == HELD_BACK:
        return HELD_BACK_WHY
    if state == WAITING:
        return f"{WAITING_WHY} until {_iso(due_at)}" if due_at else WAITING_WHY
    return None


WAITING_WHY = "waiting for fair notice"


def csv_header(wave_names: list[str]) -> list[str]:
    """The CSV report's columns: the account, four per wave (`notice_state`, `notice_at`, …), the device."""
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


def _write_csv(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> None:
    writer = csv.writer(out)
    writer.writerow(csv_header(wave_names))
    write = writer.writerow
    cell, quoted = csv_cell, QUOTED_START
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
        if r[0] != last:
            accounts += 1
            last = r[0]
    written.accounts, written.rows = accounts, count


def _write_jsonl(out: TextIO, rows: Iterator[Any], wave_names: list[str], written: Written) -> None:
    device_at = 4 + 4 * len(wave_names)
    current: dict[str, Any] | None = None
    accounts = 0
    for r in rows:
        if current is None or r[0] != current["account_id"]:
            if current is not None:
                out.write(json.dumps(current, ensure_ascii=False) + "\n")
            accounts += 1
            current = {"account_id": r[0], "email": r[1], "locale": r[2], "timezone": r[3], "waves": {
                name: {"state": r[4 + 4 * i], "at": r[5 + 4 * i], "message_id": r[6 + 4 * i],
                       "error": r[7 + 4 * i]} for i, name in enumerate(wave_names)}, "devices": []}
        device_id, frm, to, state, flipped, rolled, held, why, due, note = r[device_at:device_at + 10]
        if device_id is not None:
            current["devices"].append({
                "device_id": device_id, "from": frm, "to": to, "flipped_at": flipped, "rolled_back_at": rolled,
                "held_back": held == "true", "state": state, "held_back_why": why, "due_at": due, "note": note})
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
        from campaign.evidence import htmlreport

        out.write(htmlreport.render(html_data(conn, slug, now)))
        return written
    waves = campaign_store.waves(conn, c.id)
    rows = evidence.account_rows(conn, c.id, [w.id for w in waves], HELD_BACK_WHY, WAITING_WHY)
    names = [w.name for w in waves]
    if fmt == "csv":
        _write_csv(out, rows, names, written)
    else:
        _write_jsonl(out, rows, names, written)
    return written


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


# -- the evidence: one person ----------------------------------------------------------------------------

def _zone(name: str) -> ZoneInfo | dt.timezone:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _local(t: dt.datetime | None, zone: ZoneInfo | dt.timezone) -> str | None:
    return None if t is None else t.astimezone(zone).isoformat()


def story(conn: Connection, slug: str, account_id: str | None = None, email: str | None = None) -> dict[str, Any]:
    """One person's whole story in the campaign: each message (its time in UTC and in their zone, its
    Message-ID), each device (what was changed when, or why not, and what it holds now), the suppressions that
    applied to their addresses, and the audit events that touched them (the campaign's own steps and the
    suppression of their address; imports name no account). By account id, or by address (normalized first;
    the accounts with it now, else those the campaign mailed at it)."""
    if (account_id is None) == (email is None):
        raise UsageError("name one person: --account ID or --email ADDR")
    c = campaigns.get(conn, slug)
    if account_id is not None:
        people = evidence.person(conn, account_id=account_id)
        asked = f"account {account_id!r}"
    else:
        assert email is not None
        try:
            address = normalize_address(email.strip())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ids = {p.account_id for p in evidence.person(conn, email=address)}
        if not ids:  # someone who changed their address since: the one the campaign mailed
            ids.update(evidence.ledger_accounts_by_email(conn, c.id, address))
        people = [p for i in sorted(ids) for p in evidence.person(conn, account_id=i)]
        asked = f"address {address!r}"
    if not people:
        raise NotFound(f"no {asked} in the accounts (nor in {slug}'s ledger)")
    if len(people) > 1:
        raise UsageError(f"several accounts have the {asked}: {', '.join(p.account_id for p in people)}; "
                         "name one with --account")
    p = people[0]
    zone = _zone(p.timezone)
    d = c.definition
    ledger = evidence.messages(conn, c.id, p.account_id)
    returned: dict[int, list[dict[str, Any]]] = {}  # the mail that came back about each message
    for b in bounce_store.of_deliveries(conn, [m.delivery_id for m in ledger]):
        returned.setdefault(b.delivery_id, []).append({
            "kind": b.kind, "outcome": b.outcome, "status": b.status, "detail": b.detail,
            "reported_at": _iso(b.reported_at), "taken_in_at": _iso(b.imported_at)})
    messages = [{"wave": m.wave, "state": m.state, "at": _iso(m.at), "at_local": _local(m.at, zone),
                 "sent_at": _iso(m.sent_at), "message_id": m.message_id, "error": m.error, "email": m.email,
                 "locale": m.locale, "attempts": m.attempts,
                 "not_before": _iso(m.not_before) if m.state == PENDING else None,
                 "returned": returned.get(m.delivery_id, [])}
                for m in ledger]
    now = evidence.devices_now(conn, d.setting, p.account_id)
    devices = []
    for ch in evidence.device_changes(conn, c.id, p.account_id):
        value, since = now.get(ch.device_id, (None, None))
        devices.append({
            "device_id": ch.device_id, "name": ch.name, "model": ch.model, "setting": ch.setting,
            "from": ch.from_value, "to": ch.to_value, "state": ch.state, "actor": ch.actor,
            "decided_at": _iso(ch.decided_at), "notice_at": _iso(ch.notice_at), "due_at": _iso(ch.due_at),
            "flipped_at": _iso(ch.flipped_at), "flipped_at_local": _local(ch.flipped_at, zone),
            "rolled_back_at": _iso(ch.rolled_back_at), "rolled_back_at_local": _local(ch.rolled_back_at, zone),
            "held_back": ch.state in (HELD_BACK, WAITING), "held_back_why": _why(ch.state, ch.due_at),
            "note": ch.note, "value_now": value, "value_since": _iso(since)})
    for u in evidence.undecided_devices(conn, c.id, d, p.account_id):
        devices.append({"device_id": u.id, "name": u.name, "model": u.model, "setting": d.setting,
                        "from": d.from_value, "to": d.to_value, "state": "not_yet", "held_back": False,
                        "flipped_at": None, "rolled_back_at": None, "value_now": d.from_value,
                        "value_since": _iso(u.changed_at),
                        "note": "still affected: the flip has not looked at this device yet"})
    addresses = sorted({p.email.lower()} | {str(m["email"]).lower() for m in messages if m["email"]})
    suppressions = []
    for a in addresses:
        entry = suppression_store.entry(conn, a)
        if entry is not None:
            suppressions.append({"email": entry["email"], "reason": entry["reason"], "source": entry["source"],
                                 "at": _iso(entry["created_at"]), "by": entry["created_by"]})
    events = [_event(e, slug) for e in audit.events(conn, c.id) if e.action not in PRIVATE_ACTIONS]
    events += [_event(e, None) for e in audit.events(conn, actions=SUPPRESSION_ACTIONS)
               if str(e.detail.get("email", "")).lower() in addresses]
    events.sort(key=lambda e: e["at"])
    return {"campaign": slug, "cutoff": _iso(c.cutoff), "cutoff_local": _local(c.cutoff, zone),
            "account": {"account_id": p.account_id, "email": p.email, "name": p.name, "locale": p.locale,
                        "timezone": p.timezone, "country": p.country},
            "messages": messages, "devices": devices, "suppressions": suppressions, "events": events}


# Audit actions of a campaign that concern no customer (test messages go to the team's own addresses).
PRIVATE_ACTIONS = ("campaign.test_send",)
SUPPRESSION_ACTIONS = ("suppress.add",)


def story_of(engine: Engine, slug: str, account_id: str | None = None, email: str | None = None) -> dict[str, Any]:
    """`campaign report SLUG --account ID | --email ADDR`."""
    with db.read(engine) as conn:
        return story(conn, slug, account_id=account_id, email=email)


def _when(iso: str | None, zone: ZoneInfo | dt.timezone) -> str:
    """'2025-03-14 10:02 UTC (Fri 14 Mar 11:02 CET, their time)'."""
    if iso is None:
        return "—"
    t = dt.datetime.fromisoformat(iso)
    local = t.astimezone(zone)
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC ({local:%a %d %b %H:%M %Z} their time)"


def story_text(s: dict[str, Any]) -> str:
    """The story as readable lines, for support on the phone."""
    a = s["account"]
    zone = _zone(a["timezone"])
    out = [f"{a['account_id']} · {a['name']} <{a['email']}> · {a['locale']} · {a['timezone']} · {a['country']}",
           f"campaign {s['campaign']}, cutoff {_when(s['cutoff'], zone)}", "", "Messages"]
    if not s["messages"]:
        out.append("  none: this account is in none of the campaign's waves")
    for m in s["messages"]:
        line = f"  {m['wave']:<13} {m['state']:<10} {_when(m['at'], zone)}"
        if m["message_id"] and m["state"] != PENDING:
            line += f"  {m['message_id']}"
        out.append(line)
        extra = []
        if m["email"]:
            extra.append(f"to {m['email']}" + (f" in {m['locale']}" if m["locale"] else ""))
        if m["state"] == PENDING and m["not_before"]:
            extra.append(f"waits for their send window: {_when(m['not_before'], zone)}")
        if m["error"]:
            extra.append(f"why: {m['error']}")
        if extra:
            out.append(f"  {'':<13} " + "; ".join(extra))
        for r in m["returned"]:
            what = " ".join(str(x) for x in (r["kind"], r["status"]) if x)
            out.append(f"  {'':<13} came back: {what} ({r['outcome']}), taken in {_when(r['taken_in_at'], zone)}"
                       + (f": {r['detail']}" if r["detail"] else ""))
    out += ["", "Devices"]
    if not s["devices"]:
        out.append("  none: no device of this account was affected")
    for dv in s["devices"]:
        out.append(f"  {dv['device_id']} {dv['name']} ({dv['model']}): {dv['setting']} {dv['from']} → {dv['to']}")
        out.append(f"    {_device_line(dv, zone)}")
        if dv.get("value_now") is not None:
            out.append(f"    holds {dv['value_now']!r} now, since {_when(dv['value_since'], zone)}")
    out += ["", "Suppressions"]
    if not s["suppressions"]:
        out.append("  none")
    for su in s["suppressions"]:
        out.append(f"  {su['email']}: {su['reason']} — {su['source']}, by {su['by']}, {_when(su['at'], zone)}")
    out += ["", "Audit events"]
    if not s["events"]:
        out.append("  none")
    for e in s["events"]:
        out.append(escape_controls(f"  {_when(e['at'], zone)}  {e['actor']}  {e['action']}  "
                                   f"{summarize(e['detail'])}".rstrip() + _process(e)))
    return "\n".join(out)


def _device_line(dv: dict[str, Any], zone: ZoneInfo | dt.timezone) -> str:
    state = dv["state"]
    if state == CHANGED:
        told = f", first told {_when(dv['notice_at'], zone)}" if dv.get("notice_at") else ""
        return f"switched {_when(dv['flipped_at'], zone)} by {dv['actor']}{told}"
    if state == ROLLED_BACK:
        return (f"switched {_when(dv['flipped_at'], zone)}, rolled back {_when(dv['rolled_back_at'], zone)}")
    if state == LEFT and dv["flipped_at"] is None:  # the settings service reported the person's own value
        return f"not switched: {dv['note']}"
    if state == LEFT:
        return f"switched {_when(dv['flipped_at'], zone)}; the rollback left it: {dv['note']}"
    if state == HELD_BACK:
        return f"held back ({HELD_BACK_WHY}), decided {_when(dv['decided_at'], zone)}"
    if state == WAITING:
        return (f"waiting for fair notice (first notice {_when(dv['notice_at'], zone)}) "
                f"until {_when(dv['due_at'], zone)}")
    if state == APPLYING:
        return f"switch recorded {_when(dv['decided_at'], zone)}: waits for the settings service to apply it"
    if state == UNDOING:
        return (f"switched {_when(dv['flipped_at'], zone)}; rollback recorded: waits for the settings service "
                "to apply it")
    if state == UNKNOWN:
        return "not switched: the settings service does not know this device"
    return str(dv["note"])


# -- the audit log ---------------------------------------------------------------------------------------

def parse_since(value: str | None) -> dt.datetime | None:
    """`--since`: a date (midnight UTC) or an instant (UTC when it names no offset)."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r} is not an ISO 8601 date or instant (e.g. 2025-03-14 or "
                         "2025-03-14T09:00:00Z)") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _event(e: audit.Event, slug: str | None) -> dict[str, Any]:
    return {"at": _iso(e.at), "actor": e.actor, "login": e.login, "host": e.host, "action": e.action,
            "campaign": slug, "detail": e.detail}


def _process(e: dict[str, Any]) -> str:
    """The end of a log line: the process's login and host, when its login is not the declared actor."""
    return f"  ({e['login']}@{e['host']})" if e.get("login") else ""


def log(conn: Connection, slug: str, since: dt.datetime | None = None,
        actor: str | None = None) -> Iterator[dict[str, Any]]:
    """The campaign's audit events, oldest first — with those that belong to no campaign (imports,
    suppressions), which shape every audience; `campaign` is null on those."""
    c = campaigns.get(conn, slug)
    for e in audit.events(conn, c.id, since=since, actor=actor, include_global=True):
        yield _event(e, slug if e.campaign_id == c.id else None)


def log_of(engine: Engine, slug: str, since: str | None = None, actor: str | None = None) -> list[dict[str, Any]]:
    """`campaign log SLUG [--since ISO] [--actor NAME]`."""
    start = parse_since(since)
    with db.read(engine) as conn:
        return list(log(conn, slug, start, actor))


def summarize(detail: dict[str, Any]) -> str:
    """An event's detail on one line: `key=value`, counts without their zeros."""
    parts = []
    for k, v in detail.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} {iv}" for ik, iv in v.items() if iv not in (0, None, "", [], {}))
            parts.append(f"{k}: {inner or 'none'}")
        elif isinstance(v, list):
            parts.append(f"{k}=[{', '.join(map(str, v))}]")
        elif v is not None:
            parts.append(f"{k}={v}")
    return "; ".join(parts)


def log_text(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no audit events"
    # Every field escaped: a name or a relay's text holding a line break must not forge a line of the log.
    return "\n".join(escape_controls(f"{e['at']}  {e['actor']:<10} {e['action']:<18}"
                                     f"{'' if e['campaign'] else ' (all campaigns)'} "
                                     f"{summarize(e['detail'])}".rstrip() + _process(e)) for e in events)


# -- the HTML report's data ------------------------------------------------------------------------------

BUCKETS = (1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 120


def _bucket(start: dt.datetime, end: dt.datetime) -> int:
    span = (end - start).total_seconds()
    return next((b for b in BUCKETS if span / b <= MAX_BUCKETS), BUCKETS[-1])


def html_data(conn: Connection, slug: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the HTML report shows, as plain values: aggregates only, whatever the audience's size."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    d = c.definition
    waves = campaign_store.waves(conn, c.id)
    names = {w.id: w.name for w in waves}
    counts = {w.id: dict.fromkeys(DELIVERY_STATES, 0) for w in waves}
    fine: dict[tuple[int, dt.datetime], int] = {}
    for wave_id, state, slot, n in evidence.delivery_summary(conn, c.id):
        wave_counts = counts.setdefault(wave_id, dict.fromkeys(DELIVERY_STATES, 0))
        wave_counts[state] = wave_counts.get(state, 0) + n
        if slot is not None:
            fine[wave_id, slot] = fine.get((wave_id, slot), 0) + n
    slots = [slot for _, slot in fine]
    first = min(slots, default=None)
    last = max(slots, default=None)
    moments = [m for m in (first, last and last + dt.timedelta(seconds=evidence.FINE), c.cutoff,
                           *(w.at for w in waves)) if m is not None]
    start, end = min(moments), max(moments)
    width = _bucket(start, end)
    coarse: dict[tuple[int, int], int] = {}
    for (wave_id, slot), n in fine.items():
        key = (wave_id, int(slot.timestamp()) // width * width)
        coarse[key] = coarse.get(key, 0) + n
    position = {w.id: i for i, w in enumerate(waves)}
    sends = [{"wave": names.get(w, str(w)), "at": _iso(dt.datetime.fromtimestamp(b, dt.UTC)), "count": n}
             for (w, b), n in sorted(coarse.items(), key=lambda kv: (position.get(kv[0][0], 0), kv[0][1]))]
    by_locale: dict[str, dict[str, dict[str, int]]] = {}
    for w, loc, state, n in evidence.outcomes_by_locale(conn, c.id):
        by_locale.setdefault(loc, {}).setdefault(names.get(w, str(w)), {})[state] = n
    outlook = change_store.outlook(conn, c.id)
    change_accounts, change_devices = evidence.change_accounts(conn, c.id)
    return {
        "campaign": slug, "name": c.name, "state": c.state, "generated_at": _iso(now), "cutoff": _iso(c.cutoff),
        "setting": d.setting, "from": d.from_value, "to": d.to_value,
        "min_notice_seconds": d.min_notice.total_seconds() if d.min_notice else None,
        "created_at": _iso(c.created_at), "created_by": c.created_by, "scheduled_at": _iso(c.scheduled_at),
        "rolled_back_at": _iso(c.rolled_back_at),
        "waves": [{"name": w.name, "at": _iso(w.at), "expires": _iso(w.expires), "audience": w.audience,
                   "state": w.state, "paused_reason": w.paused_reason, "counts": counts[w.id]}
                  for w in waves],
        "accounts": evidence.ledger_accounts(conn, c.id),
        "flip": outlook.counts, "flip_accounts": change_accounts, "flip_devices": change_devices,
        "next_due": _iso(outlook.next_due), "last_due": _iso(outlook.last_due), "held_back_why": outlook.held_back_why,
        "span": {"start": _iso(start), "end": _iso(end), "bucket_seconds": width}, "sends": sends,
        "by_locale": by_locale,
        "steps": [{"step": s.name, "due_at": _iso(s.due_at), "state": s.state, "error": s.error}
                  for s in steps.of_campaign(conn, c.id)],
        # each with its detail worded as `campaign log` words it
        "events": [{**_event(e, slug), "summary": summarize(e.detail)} for e in audit.events(conn, c.id)],
        "approval": _approval(conn, c),
    }
