"""Checks and normalizations of single values: locales, time zones, countries (addresses: `campaign.addresses`)."""

from __future__ import annotations

import functools
import re
import zoneinfo

from babel import Locale, UnknownLocaleError

from campaign import addresses


def has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


def check_email(value: str) -> str:
    """The stored form of an address; ValueError naming the problem. The rule is `campaign.addresses`."""
    return addresses.normalize(value)


normalize_email = check_email


_LOCALE_RE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|\d{3}))?$")


@functools.lru_cache(maxsize=4096)
def normalize_locale(value: str) -> str:
    """A BCP 47 tag (language, optional script and region) that Babel knows: `de-de` → `de-DE`."""
    m = _LOCALE_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a BCP 47 locale such as en-US or de-AT")
    language, script, region = m.group(1).lower(), m.group(2), m.group(3)
    script = script.title() if script else None
    region = region.upper() if region else None
    tag = "-".join(p for p in (language, script, region) if p)
    try:
        loc = Locale.parse(tag, sep="-")
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown locale {value!r} (expected a BCP 47 tag such as en-US or de-AT)") from None
    # Babel fills in likely subtags (en-ZZ would become en_US): insist on what was asked for.
    if loc.language != language or (region and loc.territory != region):
        raise ValueError(f"unknown locale {value!r} (expected a BCP 47 tag such as en-US or de-AT)")
    return tag


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.lru_cache(maxsize=4096)
def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r} (expected an IANA name such as Europe/Berlin)")
    return value


@functools.cache
def _countries() -> frozenset[str]:
    # Babel also names regions that are not ISO 3166-1 countries (ZZ "Unknown Region", EU, UN, …).
    not_countries = {"ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"}
    return frozenset(str(code) for code in Locale("en").territories
                     if isinstance(code, str) and len(code) == 2 and code.isalpha() and code not in not_countries)


@functools.lru_cache(maxsize=1024)
def normalize_country(value: str) -> str:
    code = value.strip().upper() if isinstance(value, str) else ""
    if len(code) != 2 or code not in _countries():
        raise ValueError(f"unknown country {value!r} (expected an ISO 3166-1 alpha-2 code such as DE)")
    return code
