"""What one returned message says, and what in it names our delivery.

Read in this order: a complaint report (ARF, RFC 5965: `multipart/report; report-type=feedback-report`), a
delivery status notification (RFC 3464: a `message/delivery-status` part), else the relays' own formats that
flufl.bounce (GNU Mailman's detectors) recognizes (Exim's X-Failed-Recipients, qmail, older Postfix and
Exchange texts, …). What names the delivery: the signed token of our return path (`campaign.verp`) wherever the
envelope sender shows — the returned message's recipient headers, the report's Original-Mail-From, the
Return-Path of the returned original — and the original's Message-ID in the returned headers.

Pure: bytes in, a `Report` out; nothing here looks at the database. Every text of the message a `Report`
carries to be stored or shown (the diagnostic, the recipient) has been through `campaign.redaction`: every
secret this process holds masked, one printable line.
"""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime

import flufl.bounce

from campaign import redaction, verp

# kinds, from the most to the least severe
BOUNCE = "bounce"  # a permanent failure (5.x.x): the address does not take mail
EXPIRED = "expired"  # the relay gave up after temporary failures (Action: failed, 4.x.x): not delivered
DELAY = "delay"  # still being tried (Action: delayed, 4.x.x)
COMPLAINT = "complaint"  # the person reported it as spam (ARF)
OTHER = "other"  # a report of something else (delivered, relayed, not-spam)
UNRECOGNIZED = "unrecognized"  # not a report we can read (an auto-reply, spam, a person's mail)
KINDS = (BOUNCE, EXPIRED, DELAY, COMPLAINT, OTHER, UNRECOGNIZED)

# flufl.bounce logs a detector that trips over a malformed message with its traceback; `read` reports such a
# message itself (`unrecognized`, "could not be read"), so those lines would only be noise in a command's output.
_flufl_log = logging.getLogger("flufl.bounce")
_flufl_log.addHandler(logging.NullHandler())
_flufl_log.propagate = False

MAX_DETAIL = 500
MAX_KEY = 255
MAX_RECIPIENT = 254
MAX_REFERENCES = 20  # tokens, and Message-IDs, kept per message: a real report names one or two
_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# In free text, a status only right after an SMTP reply code ("550 5.1.1", "550-5.1.1"): a version number in a
# quoted header must not pass for one; or as qmail writes it, "(#5.1.1)".
_REPLY_STATUS_RE = re.compile(r"\b[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b|\(#([245]\.\d{1,3}\.\d{1,3})\)")
_MID_LINE_RE = re.compile(r"^Message-ID:[ \t]*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_RETURN_PATH_LINE_RE = re.compile(r"^Return-Path:[ \t]*<([^>\s]*)>", re.IGNORECASE | re.MULTILINE)
_RECIPIENT_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "x-original-rcpt-to")
_RANK = {BOUNCE: 0, EXPIRED: 1, DELAY: 2, OTHER: 3}


@dataclass(frozen=True)
class Report:
    """What one returned message says."""

    key: str  # its identity: mid:<its own Message-ID>, else sha256:<digest of its bytes>
    kind: str
    status: str | None  # the enhanced status code (5.1.1), when there is one
    recipient: str | None  # the address the report names (the delivery's own address is what counts)
    detail: str  # the diagnostic, one line
    tokens: tuple[str, ...]  # return-path tokens found (unverified), in order
    message_ids: tuple[str, ...]  # Message-IDs of the returned original, in order
    reported_at: dt.datetime | None


def parse(raw: bytes) -> Message:
    """The message, read by the email package (compat32: what flufl.bounce expects)."""
    return email.message_from_bytes(raw, policy=policy.compat32)


def read(raw: bytes) -> Report:
    """What the returned message `raw` says; mail too broken to read is `unrecognized`, never an error."""
    try:
        return _read(raw)
    except Exception as exc:  # a message from anyone: one we cannot read must not stop the others
        return Report(f"sha256:{hashlib.sha256(raw).hexdigest()}", UNRECOGNIZED, None, None,
                      f"could not be read ({type(exc).__name__})", (), (), None)


def _read(raw: bytes) -> Report:
    msg = parse(raw)
    kind, status, recipient, detail = _classify(msg)
    tokens, mids = _references(msg)
    secrets = redaction.secrets()
    return Report(_key(msg, raw, secrets), kind, status,
                  safe(recipient, MAX_RECIPIENT, secrets) or None if recipient else None,
                  safe(detail, MAX_DETAIL, secrets), tuple(tokens[:MAX_REFERENCES]), tuple(mids[:MAX_REFERENCES]),
                  _date(msg.get("Date")))


# -- what it is ------------------------------------------------------------------------------------------

def _classify(msg: Message) -> tuple[str, str | None, str | None, str]:
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return _complaint(part)
    found: list[tuple[str, str | None, str | None, str]] = []
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            found += [_recipient_block(block) for block in _blocks(part)]
    found = [f for f in found if f[0] != UNRECOGNIZED]
    if found:
        return min(found, key=lambda f: _RANK[f[0]])
    return _other_formats(msg)


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (the email package splits message/delivery-status itself;
    the global one, RFC 6533, is text)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser(policy=policy.compat32).parsestr(b.strip() + "\n")
            for b in re.split(r"\r?\n[ \t]*\r?\n", text) if b.strip()]


def _address(field: str | None) -> str | None:
    """`rfc822; pat@example.com` → pat@example.com."""
    if not field:
        return None
    value = field.partition(";")[2] if ";" in field else field
    value = value.strip().strip("<>").strip()
    return value or None


def _recipient_block(block: Message) -> tuple[str, str | None, str | None, str]:
    action = (block.get("Action") or "").strip().lower()
    if not action:
        return UNRECOGNIZED, None, None, ""  # the per-message block (Reporting-MTA, Arrival-Date, …)
    diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
    diagnostic = diagnostic.partition(";")[2].strip() if diagnostic.lower().startswith(("smtp;", "x-")) else diagnostic
    m = _STATUS_RE.search(block.get("Status") or "") or _STATUS_RE.search(diagnostic)
    status = ".".join(m.groups()) if m else None
    recipient = _address(block.get("Original-Recipient")) or _address(block.get("Final-Recipient"))
    detail = diagnostic or f"Action: {action}" + (f", Status: {status}" if status else "")
    if action.startswith(("fail", "error")):  # opensmtpd says `error`
        if status is None:
            status = "5.0.0"
        return (EXPIRED if status.startswith("4") else BOUNCE), status, recipient, detail
    if action.startswith("delayed"):
        return DELAY, status or "4.0.0", recipient, detail
    return OTHER, status, recipient, detail  # delivered, relayed, expanded


def _fields(part: Message) -> Message:
    """The fields of a message/feedback-report part (the email package reads it as one embedded message)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    return HeaderParser(policy=policy.compat32).parsestr(payload if isinstance(payload, str) else "")


def _complaint(part: Message) -> tuple[str, str | None, str | None, str]:
    fields = _fields(part)
    feedback = (fields.get("Feedback-Type") or "abuse").strip().lower()
    recipient = _address(fields.get("Original-Rcpt-To"))
    agent = " ".join((fields.get("User-Agent") or fields.get("Reporting-MTA") or "").split())
    detail = f"complaint ({feedback})" + (f" reported by {agent}" if agent else "")
    if feedback == "not-spam":
        return OTHER, None, recipient, detail
    return COMPLAINT, None, recipient, detail


def _text(msg: Message) -> str:
    """The readable text of the message (its text/plain parts), for the formats that are only text."""
    out = []
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                out.append(body.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return "\n".join(out)


def _other_formats(msg: Message) -> tuple[str, str | None, str | None, str]:
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception as exc:  # a detector tripped over a malformed message: unread, and listed as such
        return UNRECOGNIZED, None, None, f"could not be read ({type(exc).__name__})"
    text = _text(msg)
    codes = [a or b for a, b in _REPLY_STATUS_RE.findall(text)]
    if permanent:
        status = next((c for c in codes if c.startswith("5")), "5.0.0")
        return BOUNCE, status, _first(permanent), _diagnostic(text, status)
    if temporary:
        status = next((c for c in codes if c.startswith("4")), "4.0.0")
        return DELAY, status, _first(temporary), _diagnostic(text, status)
    subject = " ".join((msg.get("Subject") or "").split())
    return UNRECOGNIZED, None, None, f"not a bounce or complaint report (Subject: {subject[:200]})"


def _first(addresses: frozenset[bytes]) -> str:
    return sorted(addresses)[0].decode("ascii", errors="replace")


def _diagnostic(text: str, status: str) -> str:
    """The line of the text that carries the status, else the status alone."""
    for line in text.splitlines():
        if status in line:
            return line.strip()
    return status


# -- what names the delivery -----------------------------------------------------------------------------

def _originals(msg: Message) -> list[Message]:
    """The returned original's headers: message/rfc822 parts, text/rfc822-headers parts."""
    out: list[Message] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                out.append(payload[0])
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            body = part.get_payload(decode=True)
            text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(part.get_payload())
            out.append(HeaderParser(policy=policy.compat32).parsestr(text))
    return out


def _references(msg: Message) -> tuple[list[str], list[str]]:
    """(tokens, Message-IDs): tokens from where our envelope sender shows, Message-IDs from the returned
    original's headers (or, in a text-only bounce, from the quoted header lines)."""
    places = [str(v) for h in _RECIPIENT_HEADERS for v in msg.get_all(h, [])]
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            fields = _fields(part)
            places += [str(v) for v in fields.get_all("Original-Mail-From", [])]
    mids: list[str] = []
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            for block in _blocks(part):  # what some relays add: the envelope sender, the original's Message-ID
                places += [str(v) for v in block.get_all("X-Postfix-Sender", [])]
                mids += [str(v).strip() for v in block.get_all("X-Original-Message-ID", [])]
    originals = _originals(msg)
    for original in originals:
        places += [str(v) for v in original.get_all("Return-Path", [])]
        mids += [str(v).strip() for v in original.get_all("Message-ID", [])]
    if not originals:
        text = _text(msg)
        places += _RETURN_PATH_LINE_RE.findall(text)
        mids += _MID_LINE_RE.findall(text)
    tokens = _unique(t for place in places for t in verp.tokens(place))
    return tokens, _unique(m for m in mids if m)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- its identity and date -------------------------------------------------------------------------------

def _key(msg: Message, raw: bytes, secrets: list[str]) -> str:
    """Its own Message-ID (the same message read from a Maildir or over IMAP is the same), else its bytes'
    digest."""
    mid = " ".join(str(msg.get("Message-ID") or "").split())
    if mid.startswith("<") and mid.endswith(">") and 2 < len(mid) <= MAX_KEY - 4 and plain(mid, secrets):
        return f"mid:{mid}"
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def plain(text: str, secrets: list[str] | None = None) -> bool:
    """Whether `campaign.redaction.redact` would leave `text` as it is (one printable line, no secret);
    `secrets`: `redaction.secrets()`, when the caller has them at hand."""
    return text.isprintable() and text == text.strip() and "  " not in text and \
        not any(secret in text for secret in (redaction.secrets() if secrets is None else secrets))


def safe(text: str, limit: int, secrets: list[str] | None = None) -> str:
    """`text` from the outside, safe to store and show: `campaign.redaction.redact(text, limit)`, taking a
    quick way for the many texts that are plain already (it looks at every character's category)."""
    return text if len(text) <= limit and plain(text, secrets) else redaction.redact(text, limit)


def _date(value: object) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
