"""The fast message builder agrees with the plain EmailMessage build (G10), on hostile input too."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import re
from email.message import EmailMessage
from email.policy import default

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from campaign import verp
from campaign.addresses import needs_smtputf8, normalize, wire_form
from campaign.delivery.transport import wire_ready
from campaign.notices.mime import HeaderInjection, MessageBuilder, Parts, _LineCodec, _qp, build_plain, message_id

SENDER = "Device Privacy <privacy@example.com>"
REPLY_TO = "privacy-help@example.com"
WHEN = dt.datetime(2025, 3, 14, 16, 0, tzinfo=dt.UTC)
HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "Reply-To", "Auto-Submitted", "MIME-Version")


def parsed(raw: bytes) -> EmailMessage:
    # An RFC 6532 message (raw UTF-8 in a header) is read as UTF-8, as a reader that speaks SMTPUTF8 does.
    msg = (email.message_from_bytes(raw, policy=default) if raw.partition(b"\r\n\r\n")[0].isascii()
           else email.message_from_string(raw.decode("utf-8"), policy=default))
    assert isinstance(msg, EmailMessage)
    return msg


def summary(raw: bytes) -> dict[str, object]:
    """What a mail reader sees: decoded headers, part types, decoded contents (line breaks normalized)."""
    msg = parsed(raw)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    return {
        "headers": {h: str(msg[h]) for h in HEADERS},
        "to": [(a.display_name, a.addr_spec) for a in msg["To"].addresses],
        "parts": [(p.get_content_type(), p.get_content_charset(), p.get_content().splitlines()) for p in parts],
        "defects": [type(d).__name__ for d in msg.defects],
    }


def squash(name: str) -> str:
    # Python's address parser puts a space between adjacent encoded-words of a display name, which
    # RFC 2047 says to drop; names are compared without white space, and exactly in the test below.
    return "".join(name.split())


def _lines(body: str) -> list[str]:
    return (body if body.endswith("\n") else body + "\n").splitlines()


def expected(p: Parts) -> dict[str, object]:
    return {"to": [(squash(p.to_name), wire_form(p.to_address))], "subject": p.subject.strip(),
            "parts": [("text/plain", "utf-8", _lines(p.text)), ("text/html", "utf-8", _lines(p.html))],
            "message_id": p.message_id, "defects": []}


def seen(raw: bytes) -> dict[str, object]:
    s = summary(raw)
    headers = s["headers"]
    assert isinstance(headers, dict)
    to = s["to"]
    assert isinstance(to, list)
    return {"to": [(squash(n), a) for n, a in to], "subject": str(headers["Subject"]).strip(),
            "parts": s["parts"], "message_id": str(headers["Message-ID"]).strip(),
            "defects": s["defects"]}


def assert_same(p: Parts, reply_to: str | None = REPLY_TO) -> bytes:
    """Both builders give a reader exactly what was put in, and the same headers."""
    fast = MessageBuilder(SENDER, reply_to).build(p)
    plain = build_plain(SENDER, reply_to, p)
    assert seen(fast) == expected(p)
    if "=?" not in p.to_name + p.subject:
        # (EmailMessage writes text that looks like an encoded-word as it is, so readers decode it:
        # there the plain build is the wrong one, and only ours is held to what was put in.)
        assert seen(plain) == expected(p)
        fast_headers, plain_headers = summary(fast)["headers"], summary(plain)["headers"]
        assert isinstance(fast_headers, dict) and isinstance(plain_headers, dict)
        for h in ("From", "Date", "Reply-To", "Auto-Submitted", "MIME-Version"):
            assert fast_headers[h] == plain_headers[h]
    # Transport-level sanity of our own bytes: CRLF only, no line over 998 octets, ASCII only but for an
    # address with a UTF-8 local part (RFC 6532), which stands raw in To: and nowhere else.
    assert b"\n" not in fast.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    if needs_smtputf8(p.to_address):
        assert fast.count(f"<{p.to_address}>".encode()) == 1 or f"To: {p.to_address}\r\n".encode() in fast
        assert fast.replace(p.to_address.encode(), b"").isascii()
    else:
        assert fast.isascii()
    return fast


def parts(name: str = "Anna Schmidt", subject: str = "Your setting changes", text: str = "Hello\n",
          html: str = "<p>Hello</p>\n", address: str = "anna@example.com") -> Parts:
    return Parts(name, address, subject, text, html, message_id("voice", "notice", "a1", "example.com"), WHEN)


def test_structure_and_headers() -> None:
    raw = assert_same(parts())
    msg = parsed(raw)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"].datetime == WHEN
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]  # text first


@pytest.mark.parametrize("name", [
    "Jürgen Müller", "山田 太郎", 'Bob "The Builder" O\'Brien', "Smith, Jr.", "=?utf-8?q?fake?=",
    "<script>alert(1)</script>", "back\\slash", "x" * 300, "José Núñez-Ñandú " * 12, "tab\there", "émoji 🎉",
])
def test_hostile_names(name: str) -> None:
    assert_same(parts(name=name))


@pytest.mark.parametrize("name", ["José Núñez-Ñandú " * 12, "山田 太郎" * 30, " spaced  name "])
def test_long_encoded_names_decode_exactly(name: str) -> None:
    from email.header import decode_header, make_header
    raw = MessageBuilder(SENDER, REPLY_TO).build(parts(name=name))
    to = email.message_from_bytes(raw)["To"]  # the raw header, as a reader's RFC 2047 decoder gets it
    words, _, address = to.rpartition(" <")
    assert str(make_header(decode_header(words))) == name
    assert address == "anna@example.com>"


@pytest.mark.parametrize("subject", ["Plain ASCII", "Ändert sich — am 28. März", "設定が変更されます" * 10,
                                     "a" * 500, "=?utf-8?b?Zm9v?=", "  leading and  double  spaces "])
def test_subjects(subject: str) -> None:
    assert_same(parts(subject=subject))


@pytest.mark.parametrize("field", ["name", "subject"])
@pytest.mark.parametrize("bad", ["x\r\nBcc: victim@example.net", "x\nBcc: v@example.net", "x\rY", "x\x0bY",
                                 "x\u2028Bcc: v@example.net", "x\x85Y"])
def test_line_breaks_in_headers_are_refused(field: str, bad: str) -> None:
    p = parts(**{field: bad})
    with pytest.raises(HeaderInjection):
        MessageBuilder(SENDER, REPLY_TO).build(p)
    with pytest.raises(HeaderInjection):
        build_plain(SENDER, REPLY_TO, p)


def test_sender_with_line_break_is_refused() -> None:
    with pytest.raises(HeaderInjection):
        MessageBuilder("Privacy <privacy@example.com>\r\nBcc: x@example.net")


def test_message_id_is_deterministic_per_delivery() -> None:
    a = message_id("voice-local-processing", "notice", "acc-1", "example.com")
    assert a == message_id("voice-local-processing", "notice", "acc-1", "example.com")
    assert a != message_id("voice-local-processing", "reminder", "acc-1", "example.com")
    assert a != message_id("voice-local-processing", "notice", "acc-2", "example.com")
    assert a.startswith("<") and a.endswith("@example.com>")
    assert str(parsed(assert_same(parts()))["Message-ID"]) == parts().message_id


def test_message_id_is_keyed_with_the_bounce_key() -> None:
    """With the bounce key (a campaign that signs its return path) the unique part is an HMAC under it: not the
    digest anyone can compute from the campaign, the wave and an account id; still the same for the same
    delivery (a message sent again keeps its Message-ID), and still opening with the reference that return
    path tokens carry."""
    key, other = b"0123456789abcdef0123456789abcdef-key", b"another key, of at least 32 characters"
    args = ("voice-local-processing", "notice", "acc-1", "example.com")
    guessable = hashlib.sha256(b"voice-local-processing\0notice\0acc-1").hexdigest()[:32]  # the attacker's formula
    assert message_id(*args) == f"<{guessable}.notice.voice-local-processing@example.com>"
    keyed = message_id(*args, key)
    assert keyed == message_id(*args, key)  # deterministic per delivery
    assert keyed != message_id(*args) and guessable not in keyed
    assert keyed != message_id(*args, other)
    assert keyed != message_id("voice-local-processing", "notice", "acc-2", "example.com", key)
    assert re.fullmatch(r"<[0-9a-f]{32}\.notice\.voice-local-processing@example\.com>", keyed)
    ref = verp.reference(keyed)
    assert ref is not None and keyed.startswith(f"<{ref}") and ref != guessable[:20]


def test_bodies_with_dots_long_lines_and_crlf() -> None:
    text = "Line one\r\n.\r\n..two dots\nFrom the start\n" + "w" * 2000 + "\n\ttab and trailing space \n"
    assert_same(parts(text=text, html="<p>" + "é" * 1500 + "</p>\n"))


names = st.text(st.characters(blacklist_categories=["Cs"],
                               blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=120)
bodies = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=600)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, subject=names.filter(lambda s: s.strip() != ""), text=bodies, html=bodies)
def test_fast_equals_plain_on_anything(name: str, subject: str, text: str, html: str) -> None:
    assert_same(parts(name=name, subject=subject, text=text, html=html))


@settings(max_examples=150, deadline=None)
@given(name=names, subject=names.filter(lambda s: s.strip() != ""),
       text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=400),
       html=st.text(st.characters(blacklist_categories=["Cs"]), max_size=400))
def test_what_the_builder_makes_is_in_wire_form(name: str, subject: str, text: str, html: str) -> None:
    # The composer marks its envelopes `wire=True` on the strength of this: the transport then skips its own
    # check (`wire_ready`) and sends the bytes after DATA as they are, only dot-stuffed.
    assert wire_ready(MessageBuilder(SENDER, REPLY_TO).build(parts(name=name, subject=subject, text=text, html=html)))


@pytest.mark.parametrize(("address", "on_the_wire"), [
    ("pat@bücher.example", "pat@xn--bcher-kva.example"),  # an IDN domain: its A-label, works everywhere
    ("用户@例子.example", "用户@例子.example"),  # a UTF-8 local part: RFC 6532, the address raw
    ("josé@example.com", "josé@example.com"),
])
@pytest.mark.parametrize("name", ["Pat Müller", "山田 太郎", 'Bob "The Builder" O\'Brien', ""])
def test_international_addresses(address: str, on_the_wire: str, name: str) -> None:
    raw = assert_same(parts(name=name, address=address))
    assert [a.addr_spec for a in parsed(raw)["To"].addresses] == [on_the_wire]
    to_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"To:"))
    assert to_line.endswith(on_the_wire.encode() + (b">" if name else b""))
    assert raw.isascii() == on_the_wire.isascii()


def test_address_in_its_wire_form_from_the_sender_too() -> None:
    raw = MessageBuilder("Büro <buero@bücher.example>", "hilfe@bücher.example").build(parts())
    assert parsed(raw)["From"].addresses[0].addr_spec == "buero@xn--bcher-kva.example"
    assert parsed(raw)["Reply-To"].addresses[0].addr_spec == "hilfe@xn--bcher-kva.example"
    assert raw.isascii()


_local = st.text(st.sampled_from("abzAZ09.+_-'üéß用户名"), min_size=1, max_size=20)
_domain = st.lists(st.text(st.sampled_from("abz09-üßé例子ドメイン"), min_size=1, max_size=12),
                   min_size=1, max_size=3).map(".".join)
_tld = st.sampled_from(["com", "example", "jp", "рф", "xn--p1ai", "COM"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, subject=names.filter(lambda s: s.strip() != ""), local=_local, domain=_domain, tld=_tld)
def test_fast_equals_plain_for_international_addresses(name: str, subject: str, local: str, domain: str,
                                                       tld: str) -> None:
    try:
        address = normalize(f"{local}@{domain}.{tld}")
    except ValueError:
        assume(False)
        raise
    assert_same(parts(name=name, subject=subject, address=address))


@pytest.mark.slow
def test_whole_shipped_example_fast_equals_plain() -> None:
    """Every affected account of the shipped example, every wave: the fast bytes read as the plain ones."""
    import csv
    from pathlib import Path

    from campaign.definition import load_definition
    from campaign.notices.proofs import builder_for
    from campaign.notices.rendering import Renderer
    from campaign.recipients import DeviceView, Recipient

    root = Path(__file__).resolve().parent.parent
    d = load_definition(root / "data" / "voice-local-processing.toml", root / "templates")
    renderer = Renderer(d, root / "templates")
    with (root / "data" / "accounts.csv").open(newline="", encoding="utf-8") as fh:
        people = {r["account_id"]: r for r in csv.DictReader(fh) if r["country"] in d.countries}
    devices: dict[str, list[DeviceView]] = {}
    with (root / "data" / "devices.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["account_id"] in people and r["model"] in d.device_models and r[d.setting] == d.from_value:
                devices.setdefault(r["account_id"], []).append(DeviceView(r["device_id"], r["name"], r["model"]))
    assert len(devices) > 200
    for wave in d.waves:
        extra = {"X-Campaign": d.slug, "X-Campaign-Wave": wave.name}
        fast_builder = builder_for(d, wave)
        for account_id, views in devices.items():
            p = people[account_id]
            rendered = renderer.render(wave, Recipient(account_id, p["email"], p["name"], p["locale"],
                                                       p["timezone"]), views)
            parts = Parts(p["name"], p["email"], rendered.subject, rendered.text, rendered.html,
                          message_id(d.slug, wave.name, account_id, d.sender_domain), WHEN)
            fast, plain = fast_builder.build(parts), build_plain(d.sender, d.reply_to, parts, extra)
            assert seen(fast) == seen(plain) == expected(parts)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200), max_size=4),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_line_codec_equals_quoted_printable_of_the_whole(texts: list[str], newline: str) -> None:
    # The builder encodes line by line with a memo: byte for byte what b2a_qp makes of the whole text,
    # the first time and when every line comes from the memo.
    codec = _LineCodec()
    for text in [*texts, newline.join(texts), *texts]:
        assert codec(text) == _qp(text)
