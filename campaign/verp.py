"""Signed per-delivery return paths (VERP): with `[bounces] return_path = "bounces@example.com"` each message goes
out with the envelope sender `bounces+TOKEN@example.com`, so that mail returned to it names its delivery, and a
forged return cannot suppress an address.

TOKEN is 32 characters of lower-case base32 (a relay that folds the case of a local part cannot damage it): the
delivery's reference — the first 10 bytes of the digest that opens its Message-ID, which the ledger stores — then
an HMAC-SHA256 of the reference under the bounce key, cut to 10 bytes (80 bits: guessing one is hopeless).

The key comes from the environment (`CAMPAIGN_BOUNCE_KEY`), like every other secret here: it is never stored,
logged or printed. Several keys may be given, separated by commas: the first signs, every one verifies (to
change keys without disowning what is still in flight). `CAMPAIGN_BOUNCE_KEY_PREVIOUS` (one key, or several
separated by commas) verifies too and never signs: a key being retired, kept apart from the one in use.

The same signing key keys the Message-ID of a campaign that signs its return path (`message_id_key`,
`campaign.notices.mime.message_id`): nobody without the key can work out a delivery's Message-ID, so a returned
message that quotes it proves as much as a token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from typing import Protocol

from campaign import redaction
from campaign.addresses import is_plain_ascii
from campaign.errors import ConfigError

KEY_ENV = "CAMPAIGN_BOUNCE_KEY"
PREVIOUS_ENV = "CAMPAIGN_BOUNCE_KEY_PREVIOUS"  # keys that verify only (a key being retired)
MIN_KEY_CHARS = 32
REF_BYTES = MAC_BYTES = 10
TOKEN_CHARS = 32  # base32 of REF_BYTES + MAC_BYTES, no padding
MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1: octets in a local part
MAX_BASE_LOCAL = MAX_LOCAL - 1 - TOKEN_CHARS  # the return path's own local part, before "+TOKEN"
# A token in an address: anywhere a relay or a complaint report quotes our envelope sender.
TOKEN_RE = re.compile(r"\+([a-z2-7]{32})@", re.IGNORECASE)
# The Message-ID's opening digest (campaign.notices.mime.message_id): `<` and 32 hex digits, then `.`
_MID_RE = re.compile(r"^<([0-9a-f]{32})\.")
KEY_HELP = f"e.g. {KEY_ENV}=$(python3 -c 'import secrets; print(secrets.token_hex(32))')"


def parse_return_path(value: str) -> str:
    """The return path of a definition, checked: a plain ASCII address whose local part leaves room for
    `+TOKEN`; ValueError says what is wrong."""
    address = value.strip()
    if not is_plain_ascii(address) or "@" not in address:
        raise ValueError(f"{value!r} must be a plain ASCII address such as bounces@example.com")
    local, _, domain = address.rpartition("@")
    if "+" in local:
        raise ValueError(f"{value!r}: the local part must not contain '+' (each message adds +TOKEN after it)")
    if len(local) > MAX_BASE_LOCAL:
        raise ValueError(f"{value!r}: the local part may have at most {MAX_BASE_LOCAL} characters "
                         f"(+TOKEN adds {TOKEN_CHARS + 1}, and a local part has at most {MAX_LOCAL})")
    return f"{local}@{domain.lower()}"


@functools.cache
def _parse_keys(value: str, var: str = KEY_ENV) -> tuple[bytes, ...]:
    # Held at once: from now on every outside text this process stores or shows has them masked (G11).
    redaction.hold(value, *value.split(","))
    keys = tuple(k.strip().encode() for k in value.split(",") if k.strip())
    if not keys:
        raise ConfigError(f"{var} is empty: set it to a random key of at least {MIN_KEY_CHARS} characters "
                          f"({KEY_HELP})")
    if any(len(k) < MIN_KEY_CHARS for k in keys):
        raise ConfigError(f"{var}: each key must have at least {MIN_KEY_CHARS} characters ({KEY_HELP})")
    return keys


def keys(required: str) -> tuple[bytes, ...]:
    """The bounce keys from the environment: `CAMPAIGN_BOUNCE_KEY`'s, the signing one first, then those of
    `CAMPAIGN_BOUNCE_KEY_PREVIOUS` (which verify only; unset or empty: none). ConfigError (saying `required`,
    what needs it) when `CAMPAIGN_BOUNCE_KEY` is unset, or a key is too short. The keys themselves never appear
    in a message."""
    value = os.environ.get(KEY_ENV)
    if value is None:
        raise ConfigError(f"{KEY_ENV} is not set: {required} ({KEY_HELP}; every process that sends or imports "
                          "returned mail needs the same key)")
    current = _parse_keys(value)
    previous = os.environ.get(PREVIOUS_ENV, "")
    if not previous.strip():
        return current
    return current + tuple(k for k in _parse_keys(previous, PREVIOUS_ENV) if k not in current)


class Signed(Protocol):
    """What the return path's signing needs of a campaign definition (`campaign.definition.Definition`)."""

    @property
    def slug(self) -> str: ...

    @property
    def return_path(self) -> str | None: ...


def message_id_key(d: Signed) -> bytes | None:
    """The key of the campaign's Message-IDs (`campaign.notices.mime.message_id`): the signing bounce key when it signs
    its return path, else None (the Message-ID is then a plain digest). ConfigError as `keys`."""
    if d.return_path is None:
        return None
    return keys(f"the campaign {d.slug!r} signs its return path ([bounces] return_path)")[0]


def reference(message_id: str) -> str | None:
    """The delivery's reference in a Message-ID of ours: 20 hex digits, or None when it is not one of ours."""
    m = _MID_RE.match(message_id.strip())
    return m.group(1)[: 2 * REF_BYTES] if m else None


def _mac(key: bytes, ref: bytes) -> bytes:
    return hmac.new(key, b"campaign-verp\0" + ref, hashlib.sha256).digest()[:MAC_BYTES]


def make(ref: str, key: bytes) -> str:
    """The token of the delivery whose reference is `ref` (20 hex digits)."""
    raw = bytes.fromhex(ref)
    return base64.b32encode(raw + _mac(key, raw)).decode("ascii").lower()


def verify(token: str, keys: tuple[bytes, ...]) -> str | None:
    """The reference a token carries when one of `keys` signed it, else None (forged, or damaged)."""
    try:
        raw = base64.b32decode(token.upper())
    except (binascii.Error, ValueError):
        return None
    if len(raw) != REF_BYTES + MAC_BYTES:
        return None
    ref, mac = raw[:REF_BYTES], raw[REF_BYTES:]
    if any(hmac.compare_digest(mac, _mac(key, ref)) for key in keys):
        return ref.hex()
    return None


def tokens(text: str) -> list[str]:
    """Every token found in addresses in `text` (lower-cased), in order."""
    return [t.lower() for t in TOKEN_RE.findall(text)]


def envelope_sender(d: Signed, message_id: str, sender: str) -> str:
    """The envelope sender (MAIL FROM) of one message: `sender` (the definition's), or, with `[bounces] return_path`,
    the return path signed for this delivery. ConfigError without a usable key, ValueError for a Message-ID that
    is not ours (the send path turns either into a paused wave: nothing goes out unsigned)."""
    if d.return_path is None:
        return sender
    ref = reference(message_id)
    if ref is None:
        raise ValueError(f"cannot sign a return path for the Message-ID {message_id!r}")
    local, _, domain = d.return_path.rpartition("@")
    key = keys(f"the campaign {d.slug!r} signs its return path ([bounces] return_path)")[0]
    return f"{local}+{make(ref, key)}@{domain}"
