"""The one redaction step (G11): every text that comes from another system — an HTTP reason phrase or body, a
settings service's result field, an SMTP reply, an IMAP response, a returned message's diagnostic — goes
through `redact` before it is stored, logged or shown.

`redact` removes every secret this process holds: the ones it was told of (`hold`, called where a secret is
read: the apply token, the SMTP and IMAP passwords, the bounce keys) and the ones in the well-known
environment variables (so a worker process that never read them itself still knows them). A secret is removed
as written, percent-encoded and base64-encoded (an SMTP server echoing an AUTH exchange), and whatever is left
is one printable line: control characters, line and paragraph separators become spaces, runs of white space
one space, and the text is cut to `limit` characters.
"""

from __future__ import annotations

import base64
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable

# Variables that hold secrets by name; the apply token's variable is named by the definition, so `hold` it.
SECRET_ENV = ("CAMPAIGN_SMTP_PASSWORD", "CAMPAIGN_IMAP_PASSWORD", "CAMPAIGN_BOUNCE_KEY",
              "CAMPAIGN_BOUNCE_KEY_PREVIOUS")
MASK = "***"
LIMIT = 500  # characters of an outside text kept by default

_held: set[str] = set()
_cache: list[object] = [None, None]  # [the key it was made for, the pattern of every form of every secret]


def hold(*secrets: str | None) -> None:
    """Remember secrets this process read, so `redact` removes them from every outside text from now on."""
    for s in secrets:
        if s and s.strip():
            _held.add(s)
            _held.add(s.strip())


def _env_secrets(values: Iterable[str | None]) -> Iterable[str]:
    for value in values:
        if value and value.strip():
            yield value
            # a list of keys (CAMPAIGN_BOUNCE_KEY="new,old"): each one alone too
            yield from (k.strip() for k in value.split(",") if k.strip())


def _forms(secret: str) -> Iterable[str]:
    yield secret
    quoted = urllib.parse.quote(secret, safe="")
    if quoted != secret:
        yield quoted
        yield urllib.parse.quote_plus(secret)
    raw = secret.encode("utf-8")
    yield base64.b64encode(raw).decode("ascii")


def secrets() -> list[str]:
    """Every form of every secret known now, longest first (so a longer secret is masked whole)."""
    env = tuple(os.environ.get(var) for var in SECRET_ENV)
    found = {form for s in (*_held, *_env_secrets(env)) for form in _forms(s)}
    return sorted(found, key=lambda s: (-len(s), s))


def _pattern() -> re.Pattern[str] | None:
    """One pattern for every form of every secret (None: no secret held), made again only when they change:
    `redact` runs on every relay's reply of a send."""
    key = (frozenset(_held), tuple(os.environ.get(var) for var in SECRET_ENV))
    if _cache[0] != key:
        forms = secrets()
        _cache[:] = [key, re.compile("|".join(map(re.escape, forms))) if forms else None]
    return _cache[1]  # type: ignore[return-value]


def _printable(ch: str) -> str:
    return " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") else ch


def redact(text: object, limit: int | None = LIMIT) -> str:
    """`text` from another system, safe to store and show: every secret masked, one printable line, at most
    `limit` characters (None: no cut)."""
    s = text if isinstance(text, str) else str(text)
    pattern = _pattern()
    if pattern is not None:
        s = pattern.sub(MASK, s)
    s = " ".join((s if s.isprintable() else "".join(_printable(ch) for ch in s)).split())
    if pattern is not None:  # again: a secret split by a control character is whole now
        s = pattern.sub(MASK, s)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 3, 0)] + "..."
    return s
