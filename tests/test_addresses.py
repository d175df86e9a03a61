"""The one rule for addresses: email-validator's, internationalized, no DNS; the fast path agrees with it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaign import addresses
from campaign.addresses import (
    ascii_domain_form,
    is_plain_ascii,
    needs_smtputf8,
    normalize,
    normalize_slow,
    wire_form,
)


@pytest.mark.parametrize(("given_", "stored"), [
    ("anna@Example.COM", "anna@example.com"),
    ("Anna.Schmidt+news@example.com", "Anna.Schmidt+news@example.com"),  # the local part keeps its case
    ("pat@bücher.example", "pat@bücher.example"),
    ("pat@xn--bcher-kva.example", "pat@bücher.example"),  # an A-label is the same domain
    ("Pat@XN--BCHER-KVA.example", "Pat@bücher.example"),
    ("pat@BÜCHER.example", "pat@bücher.example"),
    ("用户@例子.example", "用户@例子.example"),  # RFC 6531
    ("用户@xn--fsqu00a.example", "用户@例子.example"),
    ("e\u0301@example.com", "\u00e9@example.com"),  # NFC
    ("Postmaster@Example.com", "postmaster@example.com"),  # RFC 2142 names are case-insensitive
])
def test_normalized_forms(given_: str, stored: str) -> None:
    assert normalize(given_) == stored
    assert normalize_slow(given_) == stored


@pytest.mark.parametrize(("value", "why"), [
    ("not-an-address", "must have an @-sign"),
    ("a..b@example.com", "two periods in a row"),
    ("a@localhost", "should have a period"),
    ("a@example.test", "special-use or reserved name"),
    ("a@[192.0.2.1]", "bracketed IP address"),
    ('"a b"@example.com', "Quoting the part before the @-sign"),
    ("Anna <anna@example.com>", "display name"),
    ("a@b@example.com", "invalid characters"),
    ("a\r\nb@example.com", "invalid character"),
    ("a@" + "x" * 250 + ".com", "too long"),
    ("", "must have an @-sign"),
])
def test_refusals_say_why_and_name_the_value(value: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not a valid email address") as info:
        normalize(value)
    assert repr(value) in str(info.value)
    assert why in str(info.value)


def test_no_dns_look_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    import email_validator.deliverability as deliverability

    def no_dns(*args: object, **kwargs: object) -> None:
        raise AssertionError("a DNS look-up")

    monkeypatch.setattr(deliverability, "validate_email_deliverability", no_dns)
    assert normalize_slow("someone@never-registered-domain-4711.example") == \
        "someone@never-registered-domain-4711.example"


def test_what_the_other_layers_need() -> None:
    assert ascii_domain_form("pat@bücher.example") == "pat@xn--bcher-kva.example"
    assert ascii_domain_form("用户@例子.example") == "用户@xn--fsqu00a.example"
    assert ascii_domain_form("anna@example.com") == "anna@example.com"
    assert not needs_smtputf8("pat@bücher.example")
    assert needs_smtputf8("用户@例子.example") and needs_smtputf8("用户@example.com")
    # On the wire: an IDN domain with an ASCII local part as its A-label (works everywhere); a UTF-8 local
    # part as it is (SMTPUTF8 and RFC 6532 headers are needed anyway).
    assert wire_form("pat@bücher.example") == "pat@xn--bcher-kva.example"
    assert wire_form("用户@例子.example") == "用户@例子.example"
    assert wire_form("anna@example.com") == "anna@example.com"
    assert is_plain_ascii("anna@example.com")
    assert not is_plain_ascii("pat@bücher.example") and not is_plain_ascii("a@b, c@d.com")


# --- the fast path agrees with email-validator ----------------------------------------------------

ATEXT = "abcXYZ019_!#$%&'*+-/=?^`{|}~"
HOSTILE = '."@ <>()[]\\,;:\r\n\t\x00\u00a0'
UNICODE = "üÜßé\u0301用户例子ﬁ\u200d\u0130İ。．"  # NFC/NFKC changes, joiners, fullwidth and ideographic dots
local_parts = st.one_of(
    st.text(st.sampled_from(ATEXT + "."), min_size=0, max_size=20),
    st.text(st.sampled_from(ATEXT + "." + HOSTILE + UNICODE), min_size=0, max_size=20),
    st.sampled_from(["postmaster", "Postmaster", "ABUSE", "info", "x" * 64, "x" * 65, "a" * 240]),
)
labels = st.one_of(
    st.text(st.sampled_from("abcXYZ019-"), min_size=0, max_size=12),
    st.text(st.sampled_from("abc-" + UNICODE + HOSTILE), min_size=1, max_size=8),
    st.sampled_from(["xn--bcher-kva", "XN--BCHER-KVA", "xn--fsqu00a", "xn--zz", "xn--", "a--b", "ab--cd",
                     "x" * 63, "x" * 64, "bücher", "BÜCHER", "例子", "127", "0x1"]),
)
tlds = st.sampled_from(["com", "COM", "example", "test", "local", "invalid", "localhost", "onion", "arpa",
                        "123", "c", "xn--p1ai", "рф", "", "museum"])
domains = st.one_of(
    st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, min_size=0, max_size=4), tlds),
    st.text(max_size=30),
)
addresses_drawn = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains),
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=10), st.text(max_size=10)),
)


def outcome(f: object, value: str) -> tuple[str, str]:
    assert callable(f)
    try:
        return "ok", f(value)
    except ValueError as exc:
        return "refused", str(exc)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=addresses_drawn)
@example(value="pat@xn--bcher-kva.example")
@example(value="Info@Example.COM")
@example(value="a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com")
@example(value="a" * 60 + "@" + "ü" * 50 + "." + "c" * 63 + ".com")
def test_fast_path_agrees_with_email_validator(value: str) -> None:
    assert outcome(normalize, value) == outcome(normalize_slow, value)


@pytest.mark.parametrize("domain", [
    "b" * 63 + "." + "c" * 63 + ".example.com",
    "ü" * 40 + "." + "c" * 63 + ".example",  # U-label: longer in octets than its A-label
    ascii_domain_form("a@" + "ü" * 40 + ".example").partition("@")[2],  # given as A-label, stored as U-label
    "例子" * 20 + ".example",
    "例子" * 20 + "。ｅｘａｍｐｌｅ",  # given longer in octets than either normalized form
    "XN--BCHER-KVA.EXAMPLE",
])
def test_fast_path_agrees_at_the_length_limit(domain: str) -> None:
    for total in range(len(domain) + 2, 262):
        value = "a" * (total - len(domain) - 1) + "@" + domain
        assert outcome(normalize, value) == outcome(normalize_slow, value), value


def test_fast_path_is_taken_for_plain_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    normalize("warm@example.com")

    def slow(value: str) -> str:
        raise AssertionError(f"slow path for {value!r}")

    monkeypatch.setattr(addresses, "normalize_slow", slow)
    assert normalize("Someone.Else@EXAMPLE.com") == "Someone.Else@example.com"


# --- the plain ASCII domain shortcut agrees with email-validator (issue 26: a long tail of domains) --------

ldh_labels = st.one_of(
    st.text(st.sampled_from("abzAZ09-"), min_size=0, max_size=8),
    st.sampled_from(["x" * 61, "x" * 62, "x" * 63, "x" * 64, "-a", "a-", "a--b", "xn--bcher-kva", "XN--ZZ", "0", "9a"]),
)
ldh_tlds = st.one_of(st.sampled_from(["com", "COM", "c", "1", "c1", "1c", "a-b", "test", "Local", "INVALID",
                                      "localhost", "onion", "arpa", "in-addr.arpa", "x" * 63, "x" * 64, ""]),
                     st.text(st.sampled_from("ab19-"), min_size=0, max_size=5))
ldh_domains = st.one_of(
    st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(ldh_labels, min_size=0, max_size=5), ldh_tlds),
    st.builds(lambda n, tld: ".".join(["a" * 63] * n + [tld]), st.integers(3, 4), ldh_tlds),  # 253 octets and about
    domains,
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domain=ldh_domains)
@example(domain="Co1859.Example.COM")
@example(domain=".".join(["a" * 63] * 3 + ["b" * 60]))  # 252 octets: "a@" + it is the longest address
@example(domain=".".join(["a" * 63] * 3 + ["b" * 61]))  # 253: one too many for "a@" + it
@example(domain="host.localhost")
def test_plain_domain_shortcut_agrees_with_email_validator(domain: str) -> None:
    # The shortcut answers for the domains it takes; email-validator's verdict on them must be the same.
    low = addresses._ldh_domain(domain)
    if low is not None:
        assert addresses._domain_slow(domain) == (low, low, len(low))
    assert addresses._domain.__wrapped__(domain) == addresses._domain_slow(domain)


def test_plain_domain_shortcut_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(domain: str) -> None:
        raise AssertionError(f"email-validator asked about {domain!r}")

    monkeypatch.setattr(addresses, "_domain_slow", slow)
    assert normalize("Anna+26@Co1859.Example.COM") == "Anna+26@co1859.example.com"
    assert normalize("x@mail-1.a1.example.org") == "x@mail-1.a1.example.org"


# --- a UTF-8 local part: email-validator's own local-part check, the domain from the cache (issue 26) ------

intl_locals = st.text(st.one_of(st.sampled_from(ATEXT + "." + HOSTILE + UNICODE + "ëअर्जुन太郎\u0308\u3000\u00ad\ufeff"),
                                st.characters(codec="utf-8")), min_size=1, max_size=24)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=intl_locals, domain=st.one_of(st.sampled_from(["example.com", "bücher.example", "例子.example",
                                                            "XN--BCHER-KVA.example", "localhost", "x" * 240 + ".com"]),
                                           domains))
@example(local="Zoë" * 60, domain="example.com")  # too long only in octets
@example(local="zoe\u0308", domain="example.com")  # not NFC: email-validator normalizes it
@example(local="用户", domain="例子.example")
def test_utf8_local_part_agrees_with_email_validator(local: str, domain: str) -> None:
    value = f"{local}@{domain}"
    assert outcome(normalize, value) == outcome(normalize_slow, value)


def test_utf8_local_part_takes_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    normalize("warm@bücher.example")

    def slow(value: str) -> str:
        raise AssertionError(f"slow path for {value!r}")

    monkeypatch.setattr(addresses, "normalize_slow", slow)
    assert normalize("Zoë26@BÜCHER.example") == "Zoë26@bücher.example"
    assert normalize("用户@bücher.example") == "用户@bücher.example"
