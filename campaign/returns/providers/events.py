"""What a provider's (verified) request says, as `Event`s: one per message and recipient, in the kinds of returned
mail (`campaign.returns.returned`: bounce, expired, delay, complaint, other) plus `delivered`.

Each provider's own payload, as its documentation describes it:
- SES ("Contents of event data that Amazon SES publishes to Amazon SNS", and the older "Amazon SNS notification
  contents"): `eventType` (or `notificationType`) Delivery, Bounce (Permanent: a bounce; Transient: SES gave up,
  not the address's fault; Undetermined: recorded), Complaint, DeliveryDelay; `mail.messageId` is SES's id, our
  Message-ID is in `mail.commonHeaders.messageId` (and `mail.headers`); `delivery.reportingMTA` and
  `remoteMtaIp` name the recipient's server.
- SendGrid ("Event Webhook Reference"): a JSON array; `sg_event_id` names each event, `smtp-id` is our
  Message-ID, `sg_message_id` SendGrid's; delivered, bounce (type `blocked`: not delivered, the address not at
  fault), dropped, deferred, spamreport.
- Mailgun ("Webhooks", event-data): `id`; delivered, failed (severity permanent: a bounce, unless the reason is
  `old` — retries ran out; temporary: a delay), complained; `message.headers.message-id` (without angle
  brackets) and `delivery-status.mx-host`.
- Postmark ("Webhooks"): `RecordType` Delivery (no id of its own: the message and recipient name it), Bounce
  (`Type` HardBounce; SoftBounce: not the address's fault; Transient: a delay), SpamComplaint; `MessageID` is
  Postmark's; our Message-ID only when a bounce's `Content` quotes the original.

Every provider may echo custom values (SendGrid's unique arguments, Mailgun's user-variables, Postmark's
Metadata): a value named `campaign_message_id` is taken for our Message-ID. Everything kept from a payload is
redacted and cut to its column's size here; a payload that is not what its provider sends raises `Malformed`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from campaign import redaction, verp
from campaign.returns import returned

DELIVERED = "delivered"
KINDS = (DELIVERED, returned.BOUNCE, returned.EXPIRED, returned.DELAY, returned.COMPLAINT, returned.OTHER)
MAX_EVENTS = 1000  # in one request (SendGrid batches up to a few hundred)
CUSTOM_MESSAGE_ID = "campaign_message_id"
_MID_RE = re.compile(r"^Message-ID:[ \t]*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class Malformed(ValueError):
    """The payload is not what the provider sends (after its signature verified): 400."""


@dataclass(frozen=True)
class Event:
    """One thing the provider saw happen to one message for one recipient."""

    key: str  # unique with the provider
    kind: str  # KINDS
    message_id: str | None  # ours (`<…>`), when the event names it
    provider_message_id: str | None
    recipient: str | None
    status: str | None  # enhanced status code, e.g. 5.1.1
    detail: str  # what the provider said, one redacted line
    occurred_at: dt.datetime | None
    accepted_by: str | None = None  # delivered: the recipient's server, as the provider names it


def _text(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return redaction.redact(str(value), limit) or None


def _ours(value: Any) -> str | None:
    """Our Message-ID in `value` (with or without angle brackets), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    mid = value.strip()
    if not mid.startswith("<"):
        mid = f"<{mid}>"
    return mid if len(mid) <= 255 and verp.reference(mid) is not None else None


def _when(value: Any) -> dt.datetime | None:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        if isinstance(value, str) and value:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _status(*texts: Any) -> str | None:
    for t in texts:
        m = _STATUS_RE.search(str(t or ""))
        if m:
            return m.group(1)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _key(*parts: Any) -> str:
    key = ":".join(str(p) for p in parts)
    if not key or len(key) > 255 or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise Malformed("an event without an id we can keep")
    return key


# -- SES ---------------------------------------------------------------------------------------------------

def ses(sns_message_id: str, message: str) -> list[Event]:
    """The SES event in an SNS Notification's Message (a JSON text)."""
    try:
        data = json.loads(message)
    except ValueError:
        raise Malformed("the SNS Message is not the JSON of an SES event") from None
    if not isinstance(data, dict):
        raise Malformed("the SNS Message is not an SES event")
    kind_name = str(data.get("eventType") or data.get("notificationType") or "")
    mail = _dict(data.get("mail"))
    common = _dict(mail.get("commonHeaders"))
    ours = _ours(common.get("messageId"))
    for h in _list(mail.get("headers")):
        if ours is None and isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id":
            ours = _ours(h.get("value"))
    tagged = _list(_dict(mail.get("tags")).get(CUSTOM_MESSAGE_ID))  # SES tags: name → [values]
    ours = ours or (_ours(tagged[0]) if tagged else None)
    provider_id = _text(mail.get("messageId"), 255)

    def event(i: int, kind: str, recipient: Any, status: str | None, detail: str, at: Any,
              accepted_by: str | None = None) -> Event:
        return Event(_key(sns_message_id, i), kind, ours, provider_id, _text(recipient, 254), status,
                     detail, _when(at), accepted_by)

    if kind_name == "Delivery":
        d = _dict(data.get("delivery"))
        server = " ".join(p for p in (_text(d.get("reportingMTA"), 200),
                                      f"({_text(d.get('remoteMtaIp'), 45)})" if d.get("remoteMtaIp") else None)
                          if p)
        detail = _text(d.get("smtpResponse"), 500) or ""
        return [event(i, DELIVERED, r, _status(detail), detail, d.get("timestamp"), server[:255] or None)
                for i, r in enumerate(_list(d.get("recipients")) or [None])]
    if kind_name == "Bounce":
        b = _dict(data.get("bounce"))
        kind = {"Permanent": returned.BOUNCE, "Transient": returned.EXPIRED}.get(str(b.get("bounceType")),
                                                                                   returned.OTHER)
        what = f"{b.get('bounceType')}/{b.get('bounceSubType')}"
        return [event(i, kind, _dict(r).get("emailAddress"), _text(_dict(r).get("status"), 16),
                      _text(f"{what}: {_dict(r).get('diagnosticCode') or ''}".strip(" :"), 500) or "",
                      b.get("timestamp"))
                for i, r in enumerate(_list(b.get("bouncedRecipients")) or [{}])]
    if kind_name == "Complaint":
        c = _dict(data.get("complaint"))
        detail = _text(f"complaint ({c.get('complaintFeedbackType') or 'abuse'}) reported by "
                       f"{c.get('userAgent') or 'the mailbox provider'}", 500) or ""
        return [event(i, returned.COMPLAINT, _dict(r).get("emailAddress"), None, detail, c.get("timestamp"))
                for i, r in enumerate(_list(c.get("complainedRecipients")) or [{}])]
    if kind_name == "DeliveryDelay":
        d = _dict(data.get("deliveryDelay"))
        return [event(i, returned.DELAY, _dict(r).get("emailAddress"), _text(_dict(r).get("status"), 16),
                      _text(f"{d.get('delayType')}: {_dict(r).get('diagnosticCode') or ''}".strip(" :"), 500) or "",
                      d.get("timestamp"))
                for i, r in enumerate(_list(d.get("delayedRecipients")) or [{}])]
    return [event(0, returned.OTHER, None, None, _text(f"SES {kind_name or 'event'}", 100) or "",
                  mail.get("timestamp"))]


# -- SendGrid ----------------------------------------------------------------------------------------------

def sendgrid(payload: Any) -> list[Event]:
    if not isinstance(payload, list):
        raise Malformed("a SendGrid event post is a JSON array of events")
    out = []
    for e in payload[:MAX_EVENTS]:
        if not isinstance(e, dict) or not e.get("sg_event_id"):
            raise Malformed("a SendGrid event without sg_event_id")
        name = str(e.get("event", ""))
        if name == "bounce":
            kind = returned.EXPIRED if e.get("type") == "blocked" else returned.BOUNCE
        else:
            kind = {"delivered": DELIVERED, "dropped": returned.EXPIRED, "deferred": returned.DELAY,
                    "spamreport": returned.COMPLAINT}.get(name, returned.OTHER)
        said = e.get("response") or e.get("reason") or ""
        detail = _text(f"{name}: {said}".strip(" :"), 500) or ""
        out.append(Event(_key(e["sg_event_id"]), kind,
                         _ours(e.get("smtp-id")) or _ours(e.get(CUSTOM_MESSAGE_ID)),
                         _text(str(e.get("sg_message_id") or "").split(".filter")[0], 255), _text(e.get("email"), 254),
                         _text(e.get("status"), 16) or _status(said), detail, _when(e.get("timestamp"))))
    return out


# -- Mailgun -----------------------------------------------------------------------------------------------

def mailgun(payload: Any) -> list[Event]:
    data = _dict(payload.get("event-data") if isinstance(payload, dict) else None)
    if not data.get("id"):
        raise Malformed("a Mailgun webhook without event-data.id")
    name, severity, reason = (str(data.get(k, "")) for k in ("event", "severity", "reason"))
    if name == "failed":
        kind = returned.DELAY if severity == "temporary" else returned.EXPIRED if reason == "old" else returned.BOUNCE
    else:
        kind = {"delivered": DELIVERED, "complained": returned.COMPLAINT}.get(name, returned.OTHER)
    status = _dict(data.get("delivery-status"))
    header_id = _dict(_dict(data.get("message")).get("headers")).get("message-id")
    ours = _ours(header_id) or _ours(_dict(data.get("user-variables")).get(CUSTOM_MESSAGE_ID))
    said = " ".join(str(x) for x in (status.get("code") or "", status.get("message") or "",
                                     status.get("description") or "") if x)
    return [Event(_key(data["id"]), kind, ours, None if ours and _ours(header_id) else _text(header_id, 255),
                  _text(data.get("recipient"), 254), _status(status.get("enhanced-code"), said),
                  _text(f"{name}{f' ({severity} {reason})'.rstrip() if severity else ''}: {said}".strip(" :"), 500)
                  or "", _when(data.get("timestamp")),
                  _text(status.get("mx-host"), 255) if kind == DELIVERED else None)]


# -- Postmark ----------------------------------------------------------------------------------------------

def _quoted_message_id(content: Any) -> str | None:
    for m in _MID_RE.finditer(str(content or "")[:200_000]):
        found = _ours(m.group(1))
        if found:
            return found
    return None


def postmark(payload: Any) -> list[Event]:
    if not isinstance(payload, dict) or not payload.get("RecordType"):
        raise Malformed("a Postmark webhook without RecordType")
    record = str(payload["RecordType"])
    provider_id = _text(payload.get("MessageID"), 255)
    ours = _ours(_dict(payload.get("Metadata")).get(CUSTOM_MESSAGE_ID)) or _quoted_message_id(payload.get("Content"))
    if record == "Delivery":
        detail = _text(payload.get("Details"), 500) or ""
        return [Event(_key("Delivery", provider_id, payload.get("Recipient")), DELIVERED, ours, provider_id,
                      _text(payload.get("Recipient"), 254), _status(detail), detail,
                      _when(payload.get("DeliveredAt")), _text(payload.get("Details"), 255))]
    if record in ("Bounce", "SpamComplaint"):
        if payload.get("ID") is None:
            raise Malformed(f"a Postmark {record} without ID")
        kind_of = {"HardBounce": returned.BOUNCE, "SoftBounce": returned.EXPIRED, "Transient": returned.DELAY,
                   "SpamComplaint": returned.COMPLAINT, "SpamNotification": returned.COMPLAINT}
        kind = returned.COMPLAINT if record == "SpamComplaint" else kind_of.get(str(payload.get("Type")),
                                                                                returned.OTHER)
        said = f"{payload.get('Type')}: {payload.get('Description') or ''} {payload.get('Details') or ''}"
        return [Event(_key(record, payload["ID"]), kind, ours, provider_id, _text(payload.get("Email"), 254),
                      _status(payload.get("Details")), _text(said.strip(" :"), 500) or "",
                      _when(payload.get("BouncedAt")))]
    return [Event(_key(record, provider_id, payload.get("Recipient") or payload.get("Email")), returned.OTHER,
                  ours, provider_id, None, None, _text(f"Postmark {record}", 100) or "", None)]


def each(events: list[Event]) -> Iterator[Event]:
    """The events once each (a batch may repeat one)."""
    seen: set[str] = set()
    for e in events:
        if e.key not in seen:
            seen.add(e.key)
            yield e
