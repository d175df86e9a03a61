"""`[[waves]] audience = "not_told"` (issue 25 item 5): a second chance that reaches exactly the affected accounts
never told — at an address corrected since, or added late — with their own fair notice; `audience --not-told
--why`. SQLite and PostgreSQL, against a real SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign.definition import parse_definition
from campaign.errors import InputError
from campaign.store import changes
from tests.conftest import ROOT, CliRun
from tests.smtpd import NO_SUCH_USER, TEMPFAIL, SmtpServer

SLUG = "voice-local-processing"
HEADER = "account_id,email,name,locale,timezone,country\n"
ACCOUNTS = HEADER + "".join(f"a{i},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(6))
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           + "".join(f"d{i},a{i},Room {i},Echo Show 10,do_not_send\n" for i in range(8)))


def definition(tmp: Path) -> Path:
    """The shipped example, its cutoff ten days ahead, its reminder a second chance (`not_told`)."""
    cutoff = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0).isoformat()
    t = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    t = t.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    t = t.replace("required = true", "required = false")
    t = t[:t.index("[send_window]")] + ("[limits]\nrate_per_second = 2000\nconcurrency = 2\nmax_attempts = 3\n"
                                       "retry_base_seconds = 0.01\nretry_max_seconds = 0.02\n"
                                       "pause_on_failure_rate = 0.95\n\n") + t[t.index("[approval]"):]
    head, waves = t.split("[[waves]]", 1)
    waves = waves.replace('name = "reminder"\nat = "cutoff - 3d"\naudience = "affected"',
                          'name = "reminder"\nat = "cutoff - 3d"\naudience = "not_told"')
    assert 'audience = "not_told"' in waves
    path = tmp / "def.toml"
    path.write_text(head + "[[waves]]" + waves, encoding="utf-8")
    return path


def delivered_to(engine: Engine, wave: str) -> dict[str, tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT d.account_id, d.state, d.email FROM delivery d "
                                 "JOIN wave w ON w.id = d.wave_id WHERE w.name = :w"), {"w": wave}).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_not_told_wave_reaches_exactly_the_corrected_and_the_late(
        run_cli: CliRun, engine: Engine, smtpd: SmtpServer, write_file: Callable[..., Path], tmp_path: Path) -> None:
    env = {"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_BOUNCE_KEY": "k" * 40}
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d0.csv", DEVICES.split("d6,")[0]))).exit_code == 0
    created = run_cli("create", str(definition(tmp_path)), env=env)
    assert created.exit_code == 0, created.output
    # The notice: user1 and user3 bounce (550), user2 and user4 fail (451 until max_attempts); user0, user5 told.
    for who in ("user1", "user3"):
        smtpd.script(f"{who}@example.com", [NO_SUCH_USER])
    for who in ("user2", "user4"):
        smtpd.script(f"{who}@example.com", [TEMPFAIL] * 3)
    sent = run_cli("send", SLUG, "--wave", "notice", "--workers", "1", "--ignore-window", env=env)
    assert sent.exit_code == 0, sent.output
    assert {a: s for a, (s, _e) in delivered_to(engine, "notice").items()} == {
        "a0": "sent", "a1": "bounced", "a2": "failed", "a3": "bounced", "a4": "failed", "a5": "sent"}
    # Corrected addresses for a1, a2 (and a5, who was told: a new address does not make them untold); a6 and its
    # device come late, after the notice went out.
    fixed = HEADER + "".join(f"a{i},fixed{i}@example.com,User {i},en-US,America/New_York,US\n" for i in (1, 2, 5))
    late = HEADER + "a6,late6@example.com,User 6,en-US,America/New_York,US\n"
    assert run_cli("import", "accounts", str(write_file("fixed.csv", fixed))).exit_code == 0
    assert run_cli("import", "accounts", str(write_file("late.csv", late))).exit_code == 0
    devices_late = "device_id,account_id,name,model,voice_recordings\nd6,a6,Room 6,Echo Show 10,do_not_send\n"
    assert run_cli("import", "devices", str(write_file("d6.csv", devices_late))).exit_code == 0

    listed = run_cli("audience", SLUG, "--not-told", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == {"campaign": SLUG, "accounts": 3, "not_told": [
        {"account_id": "a1", "email": "fixed1@example.com", "why": "bounced, address changed"},
        {"account_id": "a2", "email": "fixed2@example.com", "why": "failed, address changed"},
        {"account_id": "a6", "email": "late6@example.com", "why": "never sent, added late"}]}
    why = run_cli("audience", SLUG, "--not-told", "--why")
    assert "a1  fixed1@example.com  (bounced, address changed)" in why.output
    assert run_cli("audience", SLUG, "--why").exit_code == 2

    before = len(smtpd.messages)
    second = run_cli("send", SLUG, "--wave", "reminder", "--workers", "1", "--ignore-window", env=env)
    assert second.exit_code == 0, second.output
    got = sorted(r for m in smtpd.messages[before:] for r in m.recipients)
    assert got == ["fixed1@example.com", "fixed2@example.com", "late6@example.com"]
    assert delivered_to(engine, "reminder") == {"a1": ("sent", "fixed1@example.com"),
                                                "a2": ("sent", "fixed2@example.com"),
                                                "a6": ("sent", "late6@example.com")}
    # Sent again: nobody more; and now they are told.
    again = run_cli("send", SLUG, "--wave", "reminder", "--workers", "1", "--ignore-window", env=env)
    assert again.exit_code == 0 and len(smtpd.messages) == before + 3
    assert json.loads(run_cli("audience", SLUG, "--not-told", "--json").output)["accounts"] == 0
    # The second chance is a notice of its own: fair notice counts from it (min_notice), and `status` counts it told.
    with engine.connect() as conn:
        waves = {r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT name, id, campaign_id FROM wave"))}
        assert changes.notice_waves(conn, waves["notice"][1]) == sorted([waves["notice"][0], waves["reminder"][0]])
    coverage = json.loads(run_cli("status", SLUG, "--json").output)["notice_coverage"]
    assert coverage["told_before_cutoff"] == 5  # a0, a5 by the notice; a1, a2, a6 by the second chance


def test_a_not_told_wave_is_a_notice_before_the_cutoff() -> None:
    base = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    late = base.replace('name = "reminder"\nat = "cutoff - 3d"\naudience = "affected"\nexpires = "cutoff"',
                        'name = "reminder"\nat = "cutoff - 3d"\naudience = "not_told"\nexpires = "cutoff + 1d"')
    with pytest.raises(InputError, match="an `not_told` wave cannot be sent after the cutoff"):
        parse_definition(late, "d.toml")
    ok = parse_definition(base.replace('audience = "affected"\nexpires = "cutoff"',
                                       'audience = "not_told"'), "d.toml")
    assert ok.wave("reminder").expires == ok.cutoff  # by default, like an `affected` wave
    with pytest.raises(InputError, match="not_told \\(affected, never told"):
        parse_definition(base.replace('audience = "changed"', 'audience = "untold"'), "d.toml")
