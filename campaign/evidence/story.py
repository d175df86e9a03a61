"""`campaign report SLUG --account ID | --email ADDR`: one person's whole story in a campaign, for support on the
phone — each message, each device, the suppressions of their addresses and the audit events that touched them —
as one typed result, and as readable lines."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine

from campaign import campaigns, db
from campaign.addresses import normalize as normalize_address
from campaign.errors import NotFound, UsageError
from campaign.evidence.auditlog import Entry, entry, summarize
from campaign.evidence.words import HELD_BACK_WHY, iso, why
from campaign.models import APPLYING, CHANGED, HELD_BACK, LEFT, PENDING, ROLLED_BACK, UNDOING, UNKNOWN, WAITING
from campaign.results import Fields
from campaign.store import audit
from campaign.store import bounces as bounce_store
from campaign.store import evidence as store
from campaign.store import suppressions as suppression_store
from campaign.store.evidence import Person
from campaign.validation import escape_controls

# Audit actions of a campaign that are no part of a customer's story (test messages go to the team's own
# addresses; a gallery of real accounts' messages is the team's review material).
PRIVATE_ACTIONS = ("campaign.test_send", "campaign.preview_real_sample")
SUPPRESSION_ACTIONS = ("suppress.add",)
NOT_YET = "not_yet"  # the state of a device still affected that no flip has looked at yet


@dataclass(frozen=True)
class Returned(Fields):
    """Mail that came back about a message."""

    kind: str
    outcome: str
    status: str | None
    detail: str | None
    reported_at: str | None
    taken_in_at: str | None


@dataclass(frozen=True)
class Message(Fields):
    """A message of the campaign to this person: its time in UTC and in their zone, its Message-ID, what came back."""

    wave: str
    state: str
    at: str | None
    at_local: str | None
    sent_at: str | None
    message_id: str | None
    error: str | None
    email: str | None
    locale: str | None
    attempts: int
    not_before: str | None  # while pending: when their send window opens
    returned: list[Returned]
    # The mail provider's report (`POST /events/{provider}`): when the recipient's server accepted it, and which.
    delivered_at: str | None = None
    accepted_by: str | None = None


@dataclass(frozen=True)
class Device:
    """A device of theirs that the campaign concerns: its setting, and the value the campaign changes it from and to."""

    device_id: str
    name: str | None
    model: str | None
    setting: str
    from_value: str
    to_value: str

    def _as_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "name": self.name, "model": self.model, "setting": self.setting,
                "from": self.from_value, "to": self.to_value}


@dataclass(frozen=True)
class DeviceChange(Device):
    """A device with a change row: what was changed when, or why not, and what it holds now."""

    state: str
    actor: str
    decided_at: str | None
    notice_at: str | None
    due_at: str | None
    flipped_at: str | None
    flipped_at_local: str | None
    rolled_back_at: str | None
    rolled_back_at_local: str | None
    held_back: bool
    held_back_why: str | None
    note: str | None
    value_now: str | None
    value_since: str | None

    def as_json(self) -> dict[str, Any]:
        return {**self._as_json(), "state": self.state, "actor": self.actor, "decided_at": self.decided_at,
                "notice_at": self.notice_at, "due_at": self.due_at, "flipped_at": self.flipped_at,
                "flipped_at_local": self.flipped_at_local, "rolled_back_at": self.rolled_back_at,
                "rolled_back_at_local": self.rolled_back_at_local, "held_back": self.held_back,
                "held_back_why": self.held_back_why, "note": self.note, "value_now": self.value_now,
                "value_since": self.value_since}


@dataclass(frozen=True)
class DeviceNotYet(Device):
    """A device still affected that no flip has looked at yet: it holds `from` since `value_since`."""

    value_since: str | None
    state: str = NOT_YET
    note: str = "still affected: the flip has not looked at this device yet"

    @property
    def value_now(self) -> str:
        return self.from_value

    def as_json(self) -> dict[str, Any]:
        return {**self._as_json(), "state": self.state, "held_back": False, "flipped_at": None,
                "rolled_back_at": None, "value_now": self.value_now, "value_since": self.value_since,
                "note": self.note}


@dataclass(frozen=True)
class Suppression(Fields):
    """A suppression that applied to one of their addresses."""

    email: str
    reason: str
    source: str
    at: str | None
    by: str


@dataclass(frozen=True)
class Story:
    """One person's whole story in the campaign."""

    campaign: str
    cutoff: str | None
    cutoff_local: str | None
    account: Person
    messages: list[Message]
    devices: list[DeviceChange | DeviceNotYet]
    suppressions: list[Suppression]
    events: list[Entry]

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "cutoff": self.cutoff, "cutoff_local": self.cutoff_local,
                "account": dataclasses.asdict(self.account), "messages": [m.as_json() for m in self.messages],
                "devices": [dv.as_json() for dv in self.devices],
                "suppressions": [s.as_json() for s in self.suppressions],
                "events": [e.as_json() for e in self.events]}


def _zone(name: str) -> ZoneInfo | dt.timezone:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _local(t: dt.datetime | None, zone: ZoneInfo | dt.timezone) -> str | None:
    return None if t is None else t.astimezone(zone).isoformat()


def story(conn: Connection, slug: str, account_id: str | None = None, email: str | None = None) -> Story:
    """One person's whole story in the campaign: each message (its time in UTC and in their zone, its
    Message-ID), each device (what was changed when, or why not, and what it holds now), the suppressions that
    applied to their addresses, and the audit events that touched them (the campaign's own steps and the
    suppression of their address; imports name no account). By account id, or by address (normalized first;
    the accounts with it now, else those the campaign mailed at it)."""
    if (account_id is None) == (email is None):
        raise UsageError("name one person: --account ID or --email ADDR")
    c = campaigns.get(conn, slug)
    if account_id is not None:
        people = store.person(conn, account_id=account_id)
        asked = f"account {account_id!r}"
    else:
        assert email is not None
        try:
            address = normalize_address(email.strip())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ids = {p.account_id for p in store.person(conn, email=address)}
        if not ids:  # someone who changed their address since: the one the campaign mailed
            ids.update(store.ledger_accounts_by_email(conn, c.id, address))
        people = [p for i in sorted(ids) for p in store.person(conn, account_id=i)]
        asked = f"address {address!r}"
    if not people:
        raise NotFound(f"no {asked} in the accounts (nor in {slug}'s ledger)")
    if len(people) > 1:
        raise UsageError(f"several accounts have the {asked}: {', '.join(p.account_id for p in people)}; "
                         "name one with --account")
    p = people[0]
    zone = _zone(p.timezone)
    d = c.definition
    ledger = store.messages(conn, c.id, p.account_id)
    returned: dict[int, list[Returned]] = {}  # the mail that came back about each message
    for b in bounce_store.of_deliveries(conn, [m.delivery_id for m in ledger]):
        returned.setdefault(b.delivery_id, []).append(Returned(
            kind=b.kind, outcome=b.outcome, status=b.status, detail=b.detail,
            reported_at=iso(b.reported_at), taken_in_at=iso(b.imported_at)))
    messages = [Message(wave=m.wave, state=m.state, at=iso(m.at), at_local=_local(m.at, zone),
                        sent_at=iso(m.sent_at), message_id=m.message_id, error=m.error, email=m.email,
                        locale=m.locale, attempts=m.attempts,
                        not_before=iso(m.not_before) if m.state == PENDING else None,
                        returned=returned.get(m.delivery_id, []), delivered_at=iso(m.delivered_at),
                        accepted_by=m.accepted_by)
                for m in ledger]
    now = store.devices_now(conn, d.setting, p.account_id)
    devices: list[DeviceChange | DeviceNotYet] = []
    for ch in store.device_changes(conn, c.id, p.account_id):
        value, since = now.get(ch.device_id, (None, None))
        devices.append(DeviceChange(
            device_id=ch.device_id, name=ch.name, model=ch.model, setting=ch.setting,
            from_value=ch.from_value, to_value=ch.to_value, state=ch.state, actor=ch.actor,
            decided_at=iso(ch.decided_at), notice_at=iso(ch.notice_at), due_at=iso(ch.due_at),
            flipped_at=iso(ch.flipped_at), flipped_at_local=_local(ch.flipped_at, zone),
            rolled_back_at=iso(ch.rolled_back_at), rolled_back_at_local=_local(ch.rolled_back_at, zone),
            held_back=ch.state in (HELD_BACK, WAITING), held_back_why=why(ch.state, ch.due_at),
            note=ch.note, value_now=value, value_since=iso(since)))
    for u in store.undecided_devices(conn, c.id, d, p.account_id):
        devices.append(DeviceNotYet(device_id=u.id, name=u.name, model=u.model, setting=d.setting,
                                    from_value=d.from_value, to_value=d.to_value, value_since=iso(u.changed_at)))
    addresses = sorted({p.email.lower()} | {m.email.lower() for m in messages if m.email})
    suppressions = []
    for a in addresses:
        found = suppression_store.entry(conn, a)
        if found is not None:
            suppressions.append(Suppression(email=found["email"], reason=found["reason"], source=found["source"],
                                            at=iso(found["created_at"]), by=found["created_by"]))
    events = [entry(e, slug) for e in audit.events(conn, c.id) if e.action not in PRIVATE_ACTIONS]
    events += [entry(e, None) for e in audit.events(conn, actions=SUPPRESSION_ACTIONS)
               if str(e.detail.get("email", "")).lower() in addresses]
    events.sort(key=lambda e: e.at)
    return Story(campaign=slug, cutoff=iso(c.cutoff), cutoff_local=_local(c.cutoff, zone), account=p,
                 messages=messages, devices=devices, suppressions=suppressions, events=events)


def story_of(engine: Engine, slug: str, account_id: str | None = None, email: str | None = None) -> Story:
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


def story_text(s: Story) -> str:
    """The story as readable lines, for support on the phone."""
    a = s.account
    zone = _zone(a.timezone)
    out = [f"{a.account_id} · {a.name} <{a.email}> · {a.locale} · {a.timezone} · {a.country}",
           f"campaign {s.campaign}, cutoff {_when(s.cutoff, zone)}", "", "Messages"]
    if not s.messages:
        out.append("  none: this account is in none of the campaign's waves")
    for m in s.messages:
        line = f"  {m.wave:<13} {m.state:<10} {_when(m.at, zone)}"
        if m.message_id and m.state != PENDING:
            line += f"  {m.message_id}"
        out.append(line)
        extra = []
        if m.email:
            extra.append(f"to {m.email}" + (f" in {m.locale}" if m.locale else ""))
        if m.state == PENDING and m.not_before:
            extra.append(f"waits for their send window: {_when(m.not_before, zone)}")
        if m.delivered_at:
            extra.append(f"accepted by the recipient's mail server at {_when(m.delivered_at, zone)}"
                         + (f" ({escape_controls(m.accepted_by)})" if m.accepted_by else "")
                         + ", as the mail provider reported")
        if m.error:
            extra.append(f"why: {m.error}")
        if extra:
            out.append(f"  {'':<13} " + "; ".join(extra))
        for r in m.returned:
            what = " ".join(str(x) for x in (r.kind, r.status) if x)
            out.append(f"  {'':<13} came back: {what} ({r.outcome}), taken in {_when(r.taken_in_at, zone)}"
                       + (f": {r.detail}" if r.detail else ""))
    out += ["", "Devices"]
    if not s.devices:
        out.append("  none: no device of this account was affected")
    for dv in s.devices:
        out.append(f"  {dv.device_id} {dv.name} ({dv.model}): {dv.setting} {dv.from_value} → {dv.to_value}")
        out.append(f"    {_device_line(dv, zone)}")
        if dv.value_now is not None:
            out.append(f"    holds {dv.value_now!r} now, since {_when(dv.value_since, zone)}")
    out += ["", "Suppressions"]
    if not s.suppressions:
        out.append("  none")
    for su in s.suppressions:
        out.append(f"  {su.email}: {su.reason} — {su.source}, by {su.by}, {_when(su.at, zone)}")
    out += ["", "Audit events"]
    if not s.events:
        out.append("  none")
    for e in s.events:
        out.append(escape_controls(f"  {_when(e.at, zone)}  {e.actor}  {e.action}  "
                                   f"{summarize(e.detail)}".rstrip() + e.process()))
    return "\n".join(out)


def _device_line(dv: DeviceChange | DeviceNotYet, zone: ZoneInfo | dt.timezone) -> str:
    if isinstance(dv, DeviceNotYet):
        return dv.note
    state = dv.state
    if state == CHANGED:
        told = f", first told {_when(dv.notice_at, zone)}" if dv.notice_at else ""
        return f"switched {_when(dv.flipped_at, zone)} by {dv.actor}{told}"
    if state == ROLLED_BACK:
        return (f"switched {_when(dv.flipped_at, zone)}, rolled back {_when(dv.rolled_back_at, zone)}")
    if state == LEFT and dv.flipped_at is None:  # the settings service reported the person's own value
        return f"not switched: {dv.note}"
    if state == LEFT:
        return f"switched {_when(dv.flipped_at, zone)}; the rollback left it: {dv.note}"
    if state == HELD_BACK:
        return f"held back ({HELD_BACK_WHY}), decided {_when(dv.decided_at, zone)}"
    if state == WAITING:
        return (f"waiting for fair notice (first notice {_when(dv.notice_at, zone)}) "
                f"until {_when(dv.due_at, zone)}")
    if state == APPLYING:
        return f"switch recorded {_when(dv.decided_at, zone)}: waits for the settings service to apply it"
    if state == UNDOING:
        return (f"switched {_when(dv.flipped_at, zone)}; rollback recorded: waits for the settings service "
                "to apply it")
    if state == UNKNOWN:
        return "not switched: the settings service does not know this device"
    return str(dv.note)
