"""`campaign log`: a campaign's audit events, oldest first, with those that belong to no campaign (imports,
suppressions); and how an event is worded wherever the evidence shows one (the log, a person's story, the HTML
report)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db
from campaign.errors import UsageError
from campaign.results import Fields
from campaign.store import audit
from campaign.validation import escape_controls


@dataclass(frozen=True)
class Entry(Fields):
    """An audit event as the evidence shows it: `campaign` is null on an event that belongs to no campaign."""

    at: str
    actor: str
    login: str | None
    host: str | None
    action: str
    campaign: str | None
    detail: dict[str, Any]

    def process(self) -> str:
        """The end of a log line: the process's login and host, when its login is not the declared actor."""
        return f"  ({self.login}@{self.host})" if self.login else ""


def entry(e: audit.Event, slug: str | None) -> Entry:
    return Entry(at=e.at.isoformat(), actor=e.actor, login=e.login, host=e.host, action=e.action, campaign=slug,
                 detail=e.detail)


@dataclass(frozen=True)
class AuditLog:
    """`campaign log SLUG`: the campaign's events, oldest first."""

    campaign: str
    events: list[Entry]

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "events": [e.as_json() for e in self.events]}


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


def log(conn: Connection, slug: str, since: dt.datetime | None = None, actor: str | None = None) -> Iterator[Entry]:
    """The campaign's audit events, oldest first — with those that belong to no campaign (imports,
    suppressions), which shape every audience; `campaign` is null on those."""
    c = campaigns.get(conn, slug)
    for e in audit.events(conn, c.id, since=since, actor=actor, include_global=True):
        yield entry(e, slug if e.campaign_id == c.id else None)


def log_of(engine: Engine, slug: str, since: str | None = None, actor: str | None = None) -> AuditLog:
    """`campaign log SLUG [--since ISO] [--actor NAME]`."""
    start = parse_since(since)
    with db.read(engine) as conn:
        return AuditLog(slug, list(log(conn, slug, start, actor)))


PROOF_WORDS = {"ssh": "verified by SSH signature", "jwt": "verified by the console's single sign-on"}
LONG = ("signature", "signed", "definition", "evidence", "principal")  # in --json; `log --verify` checks them


def summarize(detail: dict[str, Any]) -> str:
    """An event's detail on one line: `key=value`, counts without their zeros; a signed approval or definition
    says that it is verified and how (the signature itself is in --json)."""
    parts = []
    for k, v in detail.items():
        if k in LONG:
            continue
        if k == "proof":
            parts.append(PROOF_WORDS.get(str(v), f"proof={v}"))
            continue
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} {iv}" for ik, iv in v.items() if iv not in (0, None, "", [], {}))
            parts.append(f"{k}: {inner or 'none'}")
        elif isinstance(v, list):
            parts.append(f"{k}=[{', '.join(map(str, v))}]")
        elif v is not None:
            parts.append(f"{k}={v}")
    return "; ".join(parts)


def log_text(events: list[Entry]) -> str:
    if not events:
        return "no audit events"
    # Every field escaped: a name or a relay's text holding a line break must not forge a line of the log.
    return "\n".join(escape_controls(f"{e.at}  {e.actor:<10} {e.action:<18}"
                                     f"{'' if e.campaign else ' (all campaigns)'} "
                                     f"{summarize(e.detail)}".rstrip() + e.process()) for e in events)
