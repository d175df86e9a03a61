"""Checks and normalizations of single values: locales, time zones, countries (addresses: `addresses`)."""

from __future__ import annotations

import functools
import re
import zoneinfo

from babel import Locale, UnknownLocaleError

from campaign import addresses


def has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


# What may not stand in a line of text we keep and later put in a header, a log line or a cell: C0 and C1
# control characters (NUL, ESC, VT, tab, CR, LF, DEL …), the line and paragraph separators U+2028/U+2029, and
# lone surrogates (JSON can carry one; UTF-8 cannot encode it).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_ACTOR = 128
MAX_SETTING_VALUE = 128
unprintable_in = UNPRINTABLE.search  # the fast check of an import's loop: a match, or None


def unprintable(value: str) -> str | None:
    """Why `value` is not one printable line (its first offending character, named), or None."""
    m = UNPRINTABLE.search(value)
    if m is None:
        return None
    ch = m.group()
    what = "a line break" if ch in "\r\n\u2028\u2029" else "a control character"
    return f"contains {what} (U+{ord(ch):04X} at character {m.start() + 1})"


def setting_value_problem(value: object) -> str | None:
    """Why `value` cannot be a setting's value — the rule for an imported value and for one a settings
    service reports alike: a string of printable characters only (`str.isprintable`: no control or format
    character, no line break), not empty, no white space around it, at most 128 characters — or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if not value.isprintable():  # a machine's value: no control, format (U+202E, U+200B …) or odd space
        problem = unprintable(value)
        if problem:
            return f"must be one printable line ({problem})"
        ch = next(c for c in value if not c.isprintable())
        return f"must be one printable line (contains U+{ord(ch):04X}, which is not printed)"
    if value != value.strip():
        return "must not begin or end with white space"
    if len(value) > MAX_SETTING_VALUE:
        return f"must be at most {MAX_SETTING_VALUE} characters (found {len(value)})"
    return None


def check_actor(value: str) -> str:
    """Who acts, for the audit log: a non-empty printable name of at most 128 characters, without the white
    space around it (`"bob "` is bob); ValueError says what is wrong."""
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        raise ValueError("the actor must be a non-empty name (--actor NAME or CAMPAIGN_ACTOR)")
    problem = unprintable(name)
    if problem:
        raise ValueError(f"the actor {name!r} {problem}: an actor is one printable name")
    if len(name) > MAX_ACTOR:
        raise ValueError(f"the actor is longer than {MAX_ACTOR} characters")
    return name


def escape_controls(text: str) -> str:
    """`text` for a terminal or a log line: every control character or line break written as an escape
    (`\\n`, `\\x1b`, `\\u2028`), so that no value can start a line or move the cursor."""
    return UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


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
