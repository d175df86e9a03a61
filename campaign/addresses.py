"""The one rule for email addresses (SPEC §3): whatever email-validator accepts without DNS look-ups.

That includes internationalized addresses: an IDN domain (IDNA 2008 with UTS-46 mapping: `bücher.example`,
or its A-label `xn--bcher-kva.example`) and an RFC 6531 local part (`用户@例子.example`). An address is
stored in email-validator's normalized form — the domain lower-cased and as U-labels, the local part
NFC-normalized — so `pat@xn--bcher-kva.example` and `Pat@BÜCHER.example` are stored as `pat@bücher.example`
and `Pat@bücher.example`, and suppression compares those forms case-insensitively.

email-validator costs some 50–400 µs an address, most of it in the domain's IDNA processing. Customer lists
hold few distinct domains, so the fast path checks an ASCII local part with one regular expression (a
plain UTF-8 one with email-validator's own local-part check) and takes the domain's verdict from a cache,
where a plain ASCII domain is decided by its lengths and labels alone; anything else (and every refusal,
for its exact message) goes through email-validator itself. Property tests prove the two agree.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from email_validator.syntax import validate_email_local_part

__all__ = [
    "ascii_domain_form",
    "is_plain_ascii",
    "needs_smtputf8",
    "normalize",
    "normalize_slow",
    "wire_form",
]

MAX_LENGTH = 254  # octets of UTF-8, for the address as given, normalized, and with an A-label domain

# RFC 5322 dot-atom of ASCII atext: what email-validator takes as an ASCII local part, unchanged.
_ATEXT = r"A-Za-z0-9_!#$%&'*+\-/=?^`{|}~"
_ASCII_LOCAL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)  # postmaster@, abuse@, …: email-validator lowers them
_CASE_INSENSITIVE_MAX = max(map(len, _CASE_INSENSITIVE))

# A plain mailbox: ASCII dot-atom @ LDH labels. Not a validity check (see normalize): a cheap test that an
# address needs no IDNA, no SMTPUTF8 and no quoting, e.g. to put it on an SMTP command line as it is.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@{_LABEL}(?:\.{_LABEL})+")


# An ASCII domain of letter-digit-hyphen labels: UTS-46 maps it by lower-casing alone and IDNA leaves it as it
# is, so email-validator's verdict is its checks of lengths, hyphens, the final letter and the special-use
# names, which `_domain` repeats without its per-character Python loops (some 100-400 µs a domain: an import
# of a long tail of company domains spent most of its time there). A label with "--" (Punycode, R-LDH) goes to
# email-validator. A property test holds the two to the same verdict.
_LDH_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]|[a-z0-9][a-z0-9-]{0,61}[a-z])")
_DOMAIN_MAX = 252  # `_domain` asks about "a@" + the domain: 254 octets at most in all
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _ldh_domain(domain: str) -> str | None:
    """The normalized form of a plain ASCII domain email-validator accepts, or None to ask email-validator."""
    if not domain.isascii() or len(domain) > _DOMAIN_MAX:
        return None
    low = domain.lower()
    if "--" in low or not _LDH_DOMAIN.fullmatch(low):
        return None
    for special in _SPECIAL_USE:
        if low == special or low.endswith("." + special):
            return None
    return low


def normalize_slow(value: str) -> str:
    """The stored form of an address, straight from email-validator: the reference the fast path is held to."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from None


@functools.lru_cache(maxsize=1 << 16)  # a long tail of company domains: about 20 MiB at most
def _domain(domain: str) -> tuple[str, str, int] | None:
    """(normalized domain, its ASCII form, the longer of the two in octets), or None when email-validator
    refuses it (normalize_slow then words why)."""
    low = _ldh_domain(domain)
    if low is not None:
        return low, low, len(low)
    return _domain_slow(domain)


def _domain_slow(domain: str) -> tuple[str, str, int] | None:
    """`_domain` as email-validator decides it: the reference `_ldh_domain` is held to."""
    try:
        info = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    if info.original != f"a@{domain}":  # not read as one domain (cannot happen for hostname characters)
        return None
    return info.domain, info.ascii_domain, max(len(info.domain.encode()), len(info.ascii_domain))


# A local part beyond ASCII (RFC 6531) without quotes, brackets, "@", white space or other ASCII specials,
# already NFC: email-validator reads it as the local part as it is, and its verdict on it is
# `validate_email_local_part`'s, which is called here — only the domain's IDNA processing (the dear part)
# comes from `_domain`'s cache. Anything else goes to email-validator whole.
_INTL_LOCAL_ASCII = frozenset(_ATEXT.replace("\\", "").replace("A-Za-z0-9", "") + ".-"
                              + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _intl_local(local: str) -> bool:
    """Whether email-validator takes `local`, a non-ASCII local part of the plain kind above, as it is."""
    if not unicodedata.is_normalized("NFC", local):
        return False
    for c in local:
        if c < "\x80" and c not in _INTL_LOCAL_ASCII:
            return False
    try:
        info = validate_email_local_part(local, allow_smtputf8=True, allow_empty_local=False)
    except EmailNotValidError:
        return False
    return info["local_part"] == local


def normalize(value: str) -> str:
    """The stored form of an address; ValueError naming the address and what is wrong with it."""
    local, at, domain = value.rpartition("@")
    if not at:
        return normalize_slow(value)
    if _ASCII_LOCAL.fullmatch(local):
        forms = _domain(domain)
        # email-validator's length rule: the address as given, normalized, and with the ASCII domain.
        if (forms is not None and len(local) + 1 + forms[2] <= MAX_LENGTH
                and (len(value) if value.isascii() else len(value.encode())) <= MAX_LENGTH):
            if len(local) <= _CASE_INSENSITIVE_MAX and local.lower() in _CASE_INSENSITIVE:
                local = local.lower()
            elif forms[0] == domain:
                return value
            return f"{local}@{forms[0]}"
    elif local and not local.isascii() and "@" not in local:
        forms = _domain(domain)
        if (forms is not None and len(local.encode()) + 1 + forms[2] <= MAX_LENGTH
                and len(value.encode()) <= MAX_LENGTH and _intl_local(local)):
            return f"{local}@{forms[0]}"
    return normalize_slow(value)


def is_plain_ascii(address: str) -> bool:
    """An ASCII dot-atom mailbox on LDH labels: needs no IDNA, no SMTPUTF8, no quoting (not a validity check)."""
    return len(address) <= MAX_LENGTH and _PLAIN.fullmatch(address) is not None


def needs_smtputf8(address: str) -> bool:
    """A local part that is not ASCII can only travel over SMTPUTF8 (RFC 6531) in RFC 6532 headers."""
    return not address.rpartition("@")[0].isascii()


def ascii_domain_form(address: str) -> str:
    """The address with its domain as A-labels (`pat@xn--bcher-kva.example`), for servers without SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    forms = _domain(domain)
    if forms is None:
        normalize_slow(address)  # raises, naming what is wrong
        raise ValueError(f"{address!r} is not a valid email address")
    return f"{local}@{forms[1]}"


def wire_form(address: str) -> str:
    """How an address goes out, in the envelope and the To header: as it is when ASCII; with an A-label
    domain when only the domain is not ASCII (works with every server); with a UTF-8 local part as it is
    (that needs SMTPUTF8 and RFC 6532 headers whatever the domain looks like)."""
    if address.isascii() or needs_smtputf8(address):
        return address
    return ascii_domain_form(address)
