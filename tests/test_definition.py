"""The campaign definition file: the shipped example parses; every bad value names file, line and key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from campaign.definition import load_definition, parse_definition
from campaign.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "data" / "voice-local-processing.toml"


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_shipped_example_parses() -> None:
    d = load_definition(EXAMPLE, ROOT / "templates")
    assert d.slug == "voice-local-processing"
    assert d.cutoff == dt.datetime(2025, 3, 28, 7, 0, tzinfo=dt.UTC)
    assert [w.name for w in d.waves] == ["notice", "reminder", "confirmation"]
    notice, reminder, confirmation = d.waves
    assert notice.at == d.cutoff - dt.timedelta(days=14) and notice.expires == d.cutoff
    assert reminder.at == d.cutoff - dt.timedelta(days=3)
    assert confirmation.at == d.cutoff + dt.timedelta(hours=2)
    assert confirmation.expires == confirmation.at + dt.timedelta(days=7)
    assert d.countries == ("US", "CA", "GB", "DE", "AT", "JP")
    assert d.send_window.start == dt.time(9, 0) and d.send_window.end == dt.time(20, 0)
    assert d.limits.rate_per_second == 50 and d.limits.max_attempts == 6
    assert d.sender_domain == "example.com"
    assert d.context["settings_url"].startswith("https://")


def problems(text: str, templates: Path | None = None) -> str:
    with pytest.raises(InputError) as info:
        parse_definition(text, "def.toml", templates)
    return str(info.value)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_cutoff_without_offset_is_refused_with_line() -> None:
    text = example_text().replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2025-03-28T00:00:00"')
    msg = problems(text)
    assert f"def.toml:{line_of(text, 'cutoff =')}: cutoff: 2025-03-28T00:00:00 has no UTC offset" in msg


def test_toml_local_datetime_cutoff_is_refused() -> None:
    text = example_text().replace('cutoff = "2025-03-28T00:00:00-07:00"', "cutoff = 2025-03-28T00:00:00")
    assert "has no UTC offset" in problems(text)


def test_native_toml_offset_datetime_is_accepted() -> None:
    text = example_text().replace('cutoff = "2025-03-28T00:00:00-07:00"', "cutoff = 2025-03-28T00:00:00-07:00")
    assert parse_definition(text).cutoff == dt.datetime(2025, 3, 28, 7, tzinfo=dt.UTC)


def test_wave_that_expires_before_it_starts() -> None:
    text = example_text().replace('at = "cutoff - 3d"\naudience = "affected"\nexpires = "cutoff"',
                                  'at = "cutoff - 3d"\naudience = "affected"\nexpires = "cutoff - 5d"')
    msg = problems(text)
    assert f"def.toml:{line_of(text, 'cutoff - 5d')}: waves[2].expires: the wave would expire" in msg


def test_unknown_audience_rule() -> None:
    text = example_text().replace('audience = "changed"', 'audience = "everybody"')
    msg = problems(text)
    assert f"def.toml:{line_of(text, 'everybody')}: waves[3].audience: unknown audience rule 'everybody'" in msg


def test_unknown_keys_everywhere() -> None:
    text = example_text().replace('slug = "voice-local-processing"', 'slug = "voice-local-processing"\nslgu = 1')
    text = text.replace("[limits]\n", "[limits]\nrate_per_minute = 5\n")
    msg = problems(text)
    assert f"def.toml:{line_of(text, 'slgu')}: slgu: unknown key" in msg
    assert f"def.toml:{line_of(text, 'rate_per_minute')}: limits.rate_per_minute: unknown key" in msg


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('slug = "voice-local-processing"', 'slug = "Voice Local"', "slug: 'Voice Local' must be lower-case"),
    ('sender = "Device Privacy <privacy@example.com>"', 'sender = "Device Privacy <privacy@>"',
     "sender: 'Device Privacy <privacy@>' is not an address"),
    ('default_locale = "en-US"', 'default_locale = "english"', "default_locale: 'english' is not a BCP 47"),
    ('countries = ["US", "CA", "GB", "DE", "AT", "JP"]', 'countries = ["US", "XX"]',
     "audience.countries: unknown country 'XX'"),
    ('start = "09:00"', 'start = "9am"', "send_window.start: '9am' is not a time of day"),
    ("rate_per_second = 50", "rate_per_second = 0", "limits.rate_per_second: must be greater than 0"),
    ("concurrency = 8", 'concurrency = "8"', "limits.concurrency: must be a whole number, not a string"),
    ("pause_on_failure_rate = 0.2", "pause_on_failure_rate = 2", "limits.pause_on_failure_rate"),
    ('from = "do_not_send"', 'from = "dont_save"', "migration.to: must differ from `from`"),
    ('at = "cutoff - 14d"', 'at = "cutof - 14d"', "waves[1].at: 'cutof - 14d' is not an ISO 8601 instant"),
    ('at = "cutoff - 14d"', 'at = "cutoff - 14 weeks"', "waves[1].at: 'cutoff - 14 weeks': write `cutoff`"),
    ('at = "cutoff + 2h"', 'at = "cutoff - 2h"', "waves[3].at: a `changed` wave goes to accounts"),
    ('expires = "cutoff"', 'expires = "cutoff + 1d"', "waves[2].expires: an `affected` wave cannot be sent"),
    ('require_notice = true', 'require_notice = "yes"', "migration.require_notice: must be true or false"),
])
def test_bad_values_name_key_and_line(old: str, new: str, expected: str) -> None:
    text = example_text()
    assert old in text
    text = text.replace(old, new, 1)
    msg = problems(text)
    assert expected in msg
    where = line_of(text, 'to = "dont_save"') if old.startswith("from") else line_of(text, new)
    assert f"def.toml:{where}: {expected}" in msg


def test_missing_required_keys() -> None:
    msg = problems('name = "x"\n')
    for key in ("slug", "sender", "template", "default_locale", "cutoff", "migration", "waves"):
        assert f"missing key {key!r}" in msg


def test_duplicate_wave_names() -> None:
    text = example_text().replace('name = "reminder"', 'name = "notice"')
    second = [n for n, line in enumerate(text.splitlines(), 1) if line == 'name = "notice"'][1]
    assert f"def.toml:{second}: waves[2].name: 'notice' is used by an earlier wave" in problems(text)


def test_not_toml_names_the_line() -> None:
    msg = problems('slug = "x"\nname = \n')
    assert msg.startswith("def.toml:2: not valid TOML")


def test_missing_template_folder(tmp_path: Path) -> None:
    msg = problems(example_text(), tmp_path)
    assert f"template: no template folder {tmp_path / 'voice-local-processing'}" in msg


def test_every_problem_is_reported_at_once() -> None:
    text = example_text().replace("rate_per_second = 50", "rate_per_second = -1")
    text = text.replace('audience = "changed"', 'audience = "nobody"')
    msg = problems(text)
    assert "rate_per_second" in msg and "nobody" in msg
    assert msg.endswith("Nothing was written.")


def test_header_injection_in_sender_is_refused() -> None:
    text = example_text().replace('sender = "Device Privacy <privacy@example.com>"',
                                  'sender = "Device Privacy <privacy@example.com>\\nBcc: x@evil.example"')
    assert "sender: must be a single line" in problems(text)


def test_min_notice_is_a_duration() -> None:
    shipped = example_text()
    assert parse_definition(shipped, "def.toml").min_notice == dt.timedelta(days=7)
    base = "\n".join(line for line in shipped.splitlines() if not line.startswith("min_notice"))
    assert parse_definition(base, "def.toml").min_notice is None
    with_it = base.replace("require_notice = true", 'require_notice = true\nmin_notice = "7d"')
    assert parse_definition(with_it, "def.toml").min_notice == dt.timedelta(days=7)
    compound = base.replace("require_notice = true", 'require_notice = true\nmin_notice = "1d 12h 30m 15s"')
    assert parse_definition(compound, "def.toml").min_notice == dt.timedelta(days=1, hours=12, minutes=30, seconds=15)
    for bad, expected in (('"7 days"', "is not a duration"), ('"0d"', "must be longer than zero"),
                          ("7", "must be a string")):
        text = base.replace("require_notice = true", f"require_notice = true\nmin_notice = {bad}")
        msg = problems(text)
        assert f"def.toml:{line_of(text, 'min_notice =')}: migration.min_notice: " in msg and expected in msg, msg


def test_an_unknown_key_says_what_was_meant_and_a_required_locale_is_read() -> None:
    text = example_text().replace("[limits]\n", "[limits]\nrate_per_secnd = 5\n")
    shipped = 'required_locales = ["en-US", "de-DE", "ja-JP", "es-US"]'
    assert shipped in text
    text = text.replace(shipped, 'required_locales = ["de-de", "ja"]')
    msg = problems(text)
    assert (f"def.toml:{line_of(text, 'rate_per_secnd')}: limits.rate_per_secnd: unknown key — did you mean "
            "`rate_per_second`?") in msg
    d = parse_definition(text.replace("rate_per_secnd = 5\n", ""), "def.toml")
    assert d.required_locales == ("de-DE", "ja")
    bad = text.replace("rate_per_secnd = 5\n", "").replace('"ja"]', '"xx-123"]')
    assert f"def.toml:{line_of(bad, 'required_locales')}: required_locales: unknown locale 'xx-123'" in problems(bad)


def test_a_url_that_cannot_be_read_is_named_without_its_password() -> None:
    text = example_text().replace("[limits]\n", '[apply]\nkind = "http"\nurl = "https://u:hunter2@[::1/x"\n\n[limits]\n')
    msg = problems(text)
    assert "apply.url: 'https://…@[::1/x' is not a URL" in msg and "hunter2" not in msg
