"""Taking in a provider's verified events: one transaction per request, with its audit events.

Each event is matched to its delivery by our Message-ID (the provider echoes it), else by the provider's own
message id when an earlier event named both. Then:

- a bounce, a give-up, a delay or a complaint takes the path of returned mail (`campaign.returns.bounces`,
  `take_vouched`): a bounce un-tells the notice and suppresses the address, a complaint suppresses it — the
  provider's verified signature standing for the return path's token;
- `delivered` records when the recipient's mail server accepted the message, and which server it was, on the
  delivery (`delivered_at`, `accepted_by`): the earliest report stands;
- every event is kept (`provider_event`) under the provider's id for it: the same event again (a retry, a
  replay) changes nothing. A signed request's one-time token (Mailgun's) is kept in the same transaction: a
  request that repeats it is `Refused` as a replay before anything is read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from campaign import db, verp
from campaign.results import Fields
from campaign.returns import bounces, returned
from campaign.returns.providers.events import DELIVERED, Event, each
from campaign.returns.providers.verify import REPLAYED, Refused
from campaign.store import audit
from campaign.store import bounces as bounce_store
from campaign.store import provider_events as store

APPLIED, RECORDED, UNMATCHED = "applied", "recorded", "unmatched"


@dataclass
class Taken(Fields):
    """What one request did: the provider's answer body (`as_json()`)."""

    provider: str
    events: int = 0
    new: int = 0
    already: int = 0  # taken in before: nothing changes
    delivered: int = 0  # deliveries whose acceptance by the recipient's server is recorded now
    bounced: int = 0
    failed: int = 0
    suppressed: int = 0
    unmatched: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Nonce:
    """A signed request's one-time token, and how long it must be remembered."""

    value: str
    keep_seconds: int


def actor_of(provider: str) -> str:
    return f"provider:{provider}"


def take(engine: Engine, provider: str, events: list[Event], nonce: Nonce | None = None) -> Taken:
    """Take in `events` of `provider` (their request verified); Refused(REPLAYED) when `nonce` was seen before."""
    actor, source = actor_of(provider), f"POST /events/{provider}"
    out = Taken(provider, events=len(events))
    with db.transaction(engine, actor, "provider.events") as tx:
        conn = tx.conn
        bounce_store.take_turn(conn)  # one request at a time takes events in, and no import meanwhile
        if nonce is not None:
            if store.nonce_seen(conn, provider, nonce.value):
                raise Refused(REPLAYED, f"{provider} token seen before")
            now_real = dt.datetime.now(dt.UTC)  # signed timestamps are real time, whatever CAMPAIGN_CLOCK says
            store.keep_nonce(conn, provider, nonce.value, now_real,
                             now_real - dt.timedelta(seconds=2 * nonce.keep_seconds))
        unique = list(each(events))
        seen = store.known(conn, provider, [e.key for e in unique])
        fresh = [e for e in unique if e.key not in seen]
        out.already = len(events) - len(fresh)
        out.new = len(fresh)
        if not fresh:
            tx.action = None  # nothing new: not even the audit log changes
            return out
        learned = store.message_ids(conn, provider, [e.provider_message_id for e in fresh
                                                     if e.message_id is None and e.provider_message_id])
        mids = {e.key: e.message_id or learned.get(e.provider_message_id or "") for e in fresh}
        now = db.utcnow()
        returned_mail = [e for e in fresh if e.kind != DELIVERED]
        result = bounces.take_vouched(conn, [(f"{source} event {e.key}", _report(provider, e, mids[e.key]))
                                             for e in returned_mail], actor, source)
        judged = bounce_store.known(conn, [f"{provider}:{e.key}" for e in returned_mail])
        found_by = _deliveries(conn, [m for m in mids.values() if m])
        rows = []
        delivered_rows = []
        for e in fresh:
            out.kinds[e.kind] = out.kinds.get(e.kind, 0) + 1
            row: dict[str, Any] = {
                "provider": provider, "key": e.key, "kind": e.kind, "provider_message_id": e.provider_message_id,
                "message_id": mids[e.key], "recipient": e.recipient, "detail": e.detail[:1024] or None,
                "occurred_at": e.occurred_at, "received_at": now, "delivery_id": None, "campaign_id": None}
            if e.kind == DELIVERED:
                found = found_by.get(mids[e.key] or "")
                if found is not None:
                    row.update(delivery_id=found.id, campaign_id=found.campaign_id, outcome=APPLIED)
                    delivered_rows.append({"d_id": found.id, "d_at": e.occurred_at or now, "d_by": e.accepted_by})
                else:
                    row["outcome"] = UNMATCHED
            else:
                outcome = judged.get(f"{provider}:{e.key}", (0, UNMATCHED))[1]
                row["outcome"] = outcome
                found = found_by.get(mids[e.key] or "") if outcome != UNMATCHED else None
                if found is not None:
                    row.update(delivery_id=found.id, campaign_id=found.campaign_id)
            out.unmatched += row["outcome"] == UNMATCHED
            rows.append(row)
        store.delivered(conn, delivered_rows)
        store.record(conn, rows)
        out.delivered = len(delivered_rows)
        out.bounced, out.failed, out.suppressed = result.bounced, result.failed, result.suppressed
        per_campaign: dict[int, int] = {}
        for r in rows:
            if r["kind"] == DELIVERED and r["campaign_id"] is not None:
                per_campaign[r["campaign_id"]] = per_campaign.get(r["campaign_id"], 0) + 1
        for cid, n in per_campaign.items():
            audit.record(conn, actor, "provider.delivered", cid, provider=provider, delivered=n)
        tx.note(provider=provider, events=out.events, new=out.new, already=out.already, delivered=out.delivered,
                bounced=out.bounced, failed=out.failed, suppressed=out.suppressed, unmatched=out.unmatched,
                kinds=out.kinds)
    return out


def _report(provider: str, e: Event, message_id: str | None) -> returned.Report:
    """The event as returned mail says it (`campaign.returns.returned.Report`), keyed by provider and event."""
    return returned.Report(f"{provider}:{e.key}", e.kind, e.status, e.recipient, e.detail, (),
                           (message_id,) if message_id else (), e.occurred_at)


def _deliveries(conn: Any, message_ids: list[str]) -> dict[str, Any]:
    """The one delivery with each Message-ID of ours (one scan of the ledger, as an import's); a Message-ID two
    deliveries share is left out: none is guessed."""
    refs = {mid: verp.reference(mid) for mid in message_ids}
    found = bounce_store.deliveries(conn, [r for r in refs.values() if r])
    out = {}
    for mid, ref in refs.items():
        same = [d for d in found.get(ref or "", []) if d.message_id == mid]
        if len(same) == 1:
            out[mid] = same[0]
    return out
