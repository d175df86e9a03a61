"""Cross-site request forgery: every form carries a token in the field `csrf`, an HMAC of the person's email under a
key this server made when it started — a page of another site cannot know it — and a POST whose Origin (or
Referer) names another host is refused before the token is looked at."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from campaign.errors import ConfigError
from campaign.redaction import hold

FIELD = "csrf"
SECRET_ENV = "CAMPAIGN_CONSOLE_SECRET"  # noqa: S105 (a variable name)  shared by the processes behind one balancer
MIN_SECRET = 32


@dataclass(frozen=True)
class Csrf:
    """Tokens bound to one person, valid while this server runs."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def token(self, email: str) -> str:
        mac = hmac.new(self.key, b"campaign-console-csrf\0" + email.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def valid(self, email: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.token(email), given or "")

    @classmethod
    def from_secret(cls, secret: str | None) -> Csrf:
        """Tokens under a key derived from `secret` (CAMPAIGN_CONSOLE_SECRET: every process that has it accepts
        the others' tokens), or under a key of this process's own when there is none."""
        if not secret:
            return cls()
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"{SECRET_ENV} must be at least {MIN_SECRET} characters (a random value; "
                              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        hold(secret)  # never shown, even in a text from elsewhere
        return cls(hashlib.sha256(b"campaign-console-csrf-key\0" + secret.encode("utf-8")).digest())


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the request says it comes from a page of another host (Origin, else Referer); True when it names
    this host, or says nothing. `Origin: null` says nothing: a browser sends it for our own forms, since our pages
    ask for no referrer (Referrer-Policy: no-referrer); the token still decides."""
    host = headers.get("host", "").lower()
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        return urlsplit(origin).netloc.lower() == host
    referer = headers.get("referer")
    if referer:
        return urlsplit(referer).netloc.lower() == host
    return True
