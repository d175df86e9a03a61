"""CAMPAIGN_SMTP_URL: the mail URL's forms and the rules it must follow (loopback only for plaintext, no password
written in it), parsed once into a `TransportURL`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from campaign.config import redact_url
from campaign.errors import ConfigError
from campaign.urls import is_loopback

__all__ = ["DEFAULT_PORTS", "URL_FORMS", "Scheme", "StartTLS", "TransportURL", "parse_url"]

StartTLS = Literal["require", "opportunistic", "off"]
Scheme = Literal["smtp", "smtps", "maildir"]

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
URL_FORMS = "smtp://HOST[:PORT][?starttls=require|opportunistic|off][&verify=off], smtps://HOST[:PORT], maildir:PATH"
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")


@dataclass(frozen=True)
class TransportURL:
    """A parsed CAMPAIGN_SMTP_URL; `str()` gives back its canonical form (never a secret)."""

    scheme: Scheme
    host: str = ""
    port: int = 0
    starttls: StartTLS | None = None  # smtp:// only; smtps:// is TLS from the first byte
    verify: bool = True
    user: str | None = None
    path: Path | None = None  # maildir: only

    @property
    def loopback(self) -> bool:
        return bool(self.host) and is_loopback(self.host)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        query = []
        if self.scheme == "smtp":
            query.append(f"starttls={self.starttls}")
        if not self.verify:
            query.append("verify=off")
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        return f"{self.scheme}://{user}{self.hostport}" + ("?" + "&".join(query) if query else "")


def parse_url(url: str) -> TransportURL:
    """Parse CAMPAIGN_SMTP_URL, refusing (ConfigError) anything unsafe or unknown."""
    # Shown without its query: a value there (a misplaced password, say) is never echoed.
    shown = redact_url(url.strip().split("?", 1)[0].split("#", 1)[0])
    scheme, sep, rest = url.strip().partition(":")
    scheme = scheme.lower()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"CAMPAIGN_SMTP_URL {shown!r}: {why}")

    if not sep:
        raise bad(f"not a mail URL; expected one of {URL_FORMS}")
    if scheme == "maildir":
        path = rest[2:] if rest.startswith("//") else rest
        if not path.strip():
            raise bad("maildir: needs a directory, e.g. maildir:./outbox")
        return TransportURL(scheme="maildir", path=Path(path).expanduser())
    if scheme not in DEFAULT_PORTS:
        raise bad(f"unknown scheme {scheme!r}; expected one of {URL_FORMS}")

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # "Invalid IPv6 URL" (smtp://[::1)
        raise bad(f"not a valid URL ({exc}); expected one of {URL_FORMS}") from None
    if parts.password is not None:
        raise bad("a password may not be written in the URL; set CAMPAIGN_SMTP_PASSWORD instead")
    host = parts.hostname or ""
    if not host:
        raise bad("no host")
    if not _HOST_RE.match(host):
        raise bad(f"invalid host {host!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if parts.path not in ("", "/"):
        raise bad(f"unexpected path {parts.path!r}")
    if parts.fragment:
        raise bad("unexpected #fragment")

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in params:
            raise bad(f"{key} is given twice")
        if key not in ("starttls", "verify"):
            raise bad(f"unknown parameter {key!r} (known: starttls, verify)")
        params[key] = value.lower()

    verify = params.get("verify", "on")
    if verify not in ("on", "off"):
        raise bad(f"verify must be on or off, not {verify!r}")
    loopback = is_loopback(host)
    starttls: StartTLS | None = None
    if scheme == "smtps":
        if "starttls" in params:
            raise bad("smtps:// is TLS from the start; starttls applies to smtp:// only")
    else:
        value = params.get("starttls", "opportunistic" if loopback else "require")
        if value not in get_args(StartTLS):
            raise bad(f"starttls must be require, opportunistic or off, not {value!r}")
        starttls = cast(StartTLS, value)
        if starttls == "off" and not loopback:
            raise bad(f"starttls=off would send mail in plaintext over the network to {host}; "
                      "it is allowed to a loopback host only")
    user = unquote(parts.username) if parts.username else None
    return TransportURL(scheme=cast(Scheme, scheme), host=host, port=port, starttls=starttls,
                        verify=verify == "on", user=user)
