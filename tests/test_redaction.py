"""The one redaction step (G11, issue 21 item 1): every secret the process holds is masked from every text
that comes from another system, and what is left is one printable line of bounded length."""

from __future__ import annotations

import base64
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaign import redaction
from campaign.redaction import MASK, hold, redact

TOKEN = "tok/en+with=odd&chars-0123456789"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redaction, "_held", set())
    for var in redaction.SECRET_ENV:
        monkeypatch.delenv(var, raising=False)


def test_a_held_secret_is_masked_as_written_percent_and_base64_encoded() -> None:
    assert TOKEN in redact(f"401 {TOKEN}")  # not held yet: nothing to mask
    hold(TOKEN)
    for form in (TOKEN, urllib.parse.quote(TOKEN, safe=""), urllib.parse.quote_plus(TOKEN),
                 base64.b64encode(TOKEN.encode()).decode()):
        shown = redact(f"401 Unauthorized: Bearer {form} is wrong")
        assert form not in shown and TOKEN not in shown
        assert shown == f"401 Unauthorized: Bearer {MASK} is wrong"


def test_secrets_of_the_environment_are_masked_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_PASSWORD", "smtp-pass-1")
    monkeypatch.setenv("CAMPAIGN_IMAP_PASSWORD", "imap-pass-2")
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY", "new-key-3333333333, old-key-4444444444")
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY_PREVIOUS", "prev-key-5555555555")
    shown = redact("smtp-pass-1 imap-pass-2 new-key-3333333333 old-key-4444444444 prev-key-5555555555")
    assert shown == " ".join([MASK] * 5)


def test_one_printable_line_and_a_length_cap() -> None:
    shown = redact("a\r\nb\x00c\x1b[2Jd\u2028e\u2029f\x85g\tend")
    assert shown == "a b c [2Jd e f g end"
    assert redact("x" * 1000, limit=50) == "x" * 47 + "..."
    assert len(redact("y" * 1000)) == redaction.LIMIT
    assert redact("z" * 1000, limit=None) == "z" * 1000


def test_a_secret_split_by_a_control_character_is_still_masked() -> None:
    hold("split secret")
    assert redact("say split\nsecret now") == f"say {MASK} now"


def test_the_longer_secret_is_masked_whole() -> None:
    hold("abc", "abcdef-long")
    assert redact("abcdef-long and abc") == f"{MASK} and {MASK}"


@given(st.text(), st.text(min_size=6, alphabet=st.characters(categories=("L", "N", "P", "S"))))
def test_no_held_secret_survives_any_text(text: str, secret: str) -> None:
    redaction._held.add(secret)
    try:
        shown = redact(text + secret + text, limit=None)
        assert secret not in shown
        assert all(ch.isprintable() for ch in shown)
        assert "\n" not in shown and "\r" not in shown
    finally:
        redaction._held.discard(secret)
