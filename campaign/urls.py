"""Rules every URL of ours follows (the SMTP relay, the IMAP mailbox, the settings service): which hosts count as
this machine, the one place where plain text (no TLS) and a password over it are allowed."""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts a secret may travel to without TLS."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split(url: str) -> SplitResult:
    """`url` split, its port read; ValueError saying what is wrong (white space or a line break in it, a host or
    port that cannot be read)."""
    if any(ch.isspace() for ch in url):
        raise ValueError("must be a URL without spaces or line breaks")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    return parts
