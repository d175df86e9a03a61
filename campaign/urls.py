"""Rules every URL of ours follows (the SMTP relay, the IMAP mailbox, the settings service): which hosts count as
this machine, the one place where plain text (no TLS) and a password over it are allowed."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts a secret may travel to without TLS."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def without_userinfo(url: str) -> str:
    """`url` with any user and password between `//` and `@` shown as `…` (for a message about the URL)."""
    return re.sub(r"(//)[^/?#]*@", r"\1…@", url, count=1)


def split(url: str) -> SplitResult:
    """`url` split, its port read; ValueError saying what is wrong (white space or a line break in it, a host or
    port that cannot be read)."""
    if any(ch.isspace() for ch in url):
        raise ValueError("must be a URL without spaces or line breaks")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"{without_userinfo(url)!r} is not a URL: {exc}") from None
    return parts


def web_parts(url: str, not_web: str, why_no_password: str) -> SplitResult | str:
    """The parts of an http:// or https:// URL with a host and neither user nor password; else what is wrong
    (`not_web` when it is no such URL; `why_no_password` says where the secret belongs instead)."""
    try:
        parts = split(url)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return not_web
    if parts.username is not None or parts.password is not None:
        return f"must carry no user or password ({why_no_password})"
    return parts


def endpoint_problem(url: str, why_no_password: str) -> str | None:
    """None when `url` is an https:// URL, or http:// to a loopback host (what travels there may be a secret or a
    signed message: never in plain text over a network), without user, password or #fragment; else what is
    wrong (`why_no_password` says where the secret belongs instead)."""
    parts = web_parts(url, f"{url!r} must be an https:// URL (http:// only to a loopback host such as 127.0.0.1)",
                      why_no_password)
    if isinstance(parts, str):
        return parts
    if parts.fragment:
        return "must have no #fragment"
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return (f"http:// is allowed only to a loopback host (127.0.0.1, ::1, localhost), not {parts.hostname!r}: "
                "use https://")
    return None
