"""Rules every URL of ours follows (the SMTP relay, the IMAP mailbox, the settings service): which hosts count as
this machine, the one place where plain text (no TLS) and a password over it are allowed."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts a secret may travel to without TLS."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
