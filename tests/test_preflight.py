"""The preflight (`campaign check`, and create / schedule / the scheduler before they act): the mistakes people
make, each found with a stable code before anyone is mailed (issue 23 item 1)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ROOT, CliRun, table_counts
from tests.ports import free_port
from tests.smtpd import SmtpServer

EXAMPLE = ROOT / "data" / "voice-local-processing.toml"
SHIPPED_REQUIRED = 'required_locales = ["en-US", "de-DE", "ja-JP", "es-US"]'
KEY = {"CAMPAIGN_BOUNCE_KEY": "0123456789abcdef0123456789abcdef"}

ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            "a1,a1@example.com,Anna,de-DE,Europe/Berlin,DE\n"
            "a2,a2@example.com,Bob,en-US,America/New_York,US\n"
            "a3,a3@example.com,Yuki,ja-JP,Asia/Tokyo,JP\n"
            "a4,a4@example.com,Ken,ja-JP,Asia/Tokyo,JP\n"
            "a5,a5@example.com,Ana,es-US,America/Los_Angeles,US\n")
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           "d1,a1,Küche,Echo Show 10,do_not_send\n"
           "d2,a2,Den,Echo Dot (4th Gen),do_not_send\n"
           "d3,a2,Office,Echo Show 10,dont_save\n"
           "d4,a3,寝室,Echo Show 10,do_not_send\n"
           "d5,a4,居間,Echo Show 15,do_not_send\n"
           "d6,a5,Sala,Echo Show 10,save\n")


def imported(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0


def definition(write_file: Callable[..., Path], *edits: tuple[str, str], name: str = "def.toml") -> Path:
    body = EXAMPLE.read_text(encoding="utf-8").replace("[approval]\nrequired = true", "[approval]\nrequired = false")
    for old, new in edits:
        assert old in body, old
        body = body.replace(old, new)
    return write_file(name, body)


def check(run_cli: CliRun, target: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_cli("check", target, "--json", *args, env=env)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def codes(found: list[dict]) -> list[str]:
    return [f["code"] for f in found]


def test_a_misspelt_setting_is_an_error_that_names_what_exists(run_cli: CliRun, engine: Engine,
                                                               write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ('setting = "voice_recordings"', 'setting = "voice_recordngs"'))
    code, out = check(run_cli, str(path), env=KEY)
    assert code == 1 and codes(out["errors"]) == ["unknown-setting"]
    error = out["errors"][0]
    assert "did you mean `voice_recordings`?" in error["message"] and "(6 devices)" in error["message"]
    assert error["known"] == {"voice_recordings": 6}
    # The text form says the same; create refuses it (exit 2) and writes nothing.
    assert "error [unknown-setting]" in run_cli("check", str(path), env=KEY).stdout
    before = table_counts(engine)
    refused = run_cli("create", str(path), env=KEY)
    assert refused.exit_code == 2 and "[unknown-setting]" in refused.stderr
    assert table_counts(engine) == before


def test_a_wrong_case_value_is_an_error_with_the_values_held(run_cli: CliRun,
                                                             write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ('from = "do_not_send"', 'from = "Do_Not_Send"'))
    code, out = check(run_cli, str(path), env=KEY)
    assert code == 1 and codes(out["errors"]) == ["unknown-value"]
    error = out["errors"][0]
    assert error["known"] == {"do_not_send": 4, "dont_save": 1, "save": 1}
    assert "did you mean `do_not_send`?" in error["message"]


def test_an_audience_of_nobody_warns_at_create_and_refuses_schedule(run_cli: CliRun,
                                                                      write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ('countries = ["US", "CA", "GB", "DE", "AT", "JP"]', 'countries = ["FR"]'))
    code, out = check(run_cli, str(path), env=KEY)
    assert code == 1 and codes(out["errors"]) == ["empty-audience"]
    created = run_cli("create", str(path), env=KEY)
    assert created.exit_code == 0 and "warning [empty-audience]" in created.output
    refused = run_cli("schedule", "voice-local-processing", env={**KEY, "CAMPAIGN_CLOCK": "2025-03-01T00:00:00Z"})
    assert refused.exit_code == 2 and "[empty-audience]" in refused.stderr


def test_a_missing_secret_is_an_error_for_check_and_a_warning_for_create(run_cli: CliRun,
                                                                         write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ("[limits]\n", '[apply]\nkind = "http"\nurl = "https://settings.example/v1"\n\n'
                                                 "[limits]\n"))
    code, out = check(run_cli, str(path))
    assert code == 1 and codes(out["errors"]) == ["missing-secret", "missing-secret"]
    assert [e["variable"] for e in out["errors"]] == ["CAMPAIGN_BOUNCE_KEY", "CAMPAIGN_APPLY_TOKEN"]
    code, out = check(run_cli, str(path), env={**KEY, "CAMPAIGN_APPLY_TOKEN": "t0ken-for-the-service"})
    assert code == 0 and "missing-secret" not in codes(out["errors"] + out["warnings"])
    created = run_cli("create", str(path))
    assert created.exit_code == 0 and created.output.count("warning [missing-secret]") == 2


def test_fallbacks_warn_and_a_required_locale_without_templates_is_an_error(
        run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> None:
    imported(run_cli, write_file)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    for folder in ("ja-JP", "ja"):
        for part in ("subject", "txt", "html"):
            (templates / "voice-local-processing" / folder / f"reminder.{part}.j2").unlink(missing_ok=True)
    env = {**KEY, "CAMPAIGN_TEMPLATES": str(templates)}
    path = definition(write_file, (SHIPPED_REQUIRED, ""))
    code, out = check(run_cli, str(path), env=env)
    assert code == 0, out
    fallback = [w for w in out["warnings"] if w["code"] == "fallback"]
    assert fallback == [{"code": "fallback", "message": fallback[0]["message"], "wave": "reminder",
                         "locale": "ja-JP", "template_locale": "en-US", "accounts": 2}]
    required = definition(write_file, (SHIPPED_REQUIRED, 'required_locales = ["ja-JP", "de-DE"]'),
                          name="required.toml")
    code, out = check(run_cli, str(required), env=env)
    assert code == 1 and codes(out["errors"]) == ["missing-translation"]
    assert out["errors"][0]["wave"] == "reminder" and out["errors"][0]["locale"] == "ja-JP"


def test_a_locale_with_part_of_a_message_is_missing_templates(run_cli: CliRun, write_file: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    imported(run_cli, write_file)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "voice-local-processing" / "de-DE" / "notice.html.j2").unlink()
    code, out = check(run_cli, str(definition(write_file)), env={**KEY, "CAMPAIGN_TEMPLATES": str(templates)})
    assert code == 1 and codes(out["errors"]) == ["missing-templates"]
    assert out["errors"][0]["missing"] == ["de-DE/notice.html.j2"]


def test_timing_warnings(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ('at = "cutoff - 14d"', 'at = "cutoff - 2d"'),
                      ("rate_per_second = 50", "rate_per_second = 0.00001"))
    code, out = check(run_cli, str(path), env=KEY)
    assert code == 0
    assert "notice-too-late" in codes(out["warnings"]) and "wave-too-long" in codes(out["warnings"])
    late = next(w for w in out["warnings"] if w["code"] == "notice-too-late")
    # The notice now comes after the reminder (3 days before): the reminder tells first, 4 days short of 7.
    assert late["wave"] == "reminder" and late["late_seconds"] == 4 * 86400


def test_check_by_slug_uses_the_frozen_definition(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    code, out = check(run_cli, "voice-local-processing", env=KEY)
    assert code == 0 and out["campaign"] == "voice-local-processing" and out["errors"] == []
    missing = run_cli("check", "no-such-campaign")
    assert missing.exit_code == 2 and "neither a campaign" in missing.stderr


@pytest.mark.usefixtures("workdir")
def test_the_scheduler_says_ahead_what_would_fail(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    imported(run_cli, write_file)
    clock = {"CAMPAIGN_CLOCK": "2025-03-01T00:00:00Z"}
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    assert run_cli("schedule", "voice-local-processing", env={**KEY, **clock}).exit_code == 0
    # On the scheduler's host the bounce key is missing: said now, weeks before the notice goes out.
    with caplog.at_level(logging.ERROR):
        ran = run_cli("scheduler", "run", "--once", env=clock)
    assert ran.exit_code == 0, ran.output
    assert "voice-local-processing: preflight: would fail: [missing-secret]" in caplog.text
    status = run_cli("status", "voice-local-processing", "--json", env=clock)
    assert [e["code"] for e in json.loads(status.stdout)["preflight"]["errors"]] == ["missing-secret"]
    assert "missing-secret" in run_cli("status", "voice-local-processing", env=clock).stdout
    run_cli("scheduler", "run", "--once", env=clock)  # the same findings: no second event
    assert run_cli("scheduler", "run", "--once", env={**KEY, **clock}).exit_code == 0
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT action FROM audit_event WHERE action LIKE 'preflight.%' "
                                    "ORDER BY id")).scalars().all()
    assert actions == ["preflight.failed", "preflight.passed"]
    assert json.loads(run_cli("status", "voice-local-processing", "--json", env=clock).stdout)["preflight"] is None


def test_send_keeps_the_waves_in_order_and_says_how_far_ahead(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                               write_file: Callable[..., Path]) -> None:
    """A reminder before the notice reminds people of what they were never told: refused unless --out-of-order;
    a wave sent before its time says how far ahead (issue 23 item 2)."""
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    env = {**KEY, "CAMPAIGN_CLOCK": "2025-03-10T07:00:00Z", "CAMPAIGN_SMTP_URL": smtpd.url}
    before = table_counts(engine)
    refused = run_cli("send", "voice-local-processing", "--wave", "reminder", env=env)
    assert refused.exit_code == 2
    assert "comes after the `affected` wave 'notice', which has not been sent" in refused.stderr
    assert "--out-of-order" in refused.stderr and table_counts(engine) == before
    sent = run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", "--workers", "1", "--json",
                   env=env)
    assert sent.exit_code == 0, sent.output
    assert 4 * 86400 - 60 < json.loads(sent.stdout)["ahead_seconds"] <= 4 * 86400  # due 2025-03-14T07:00Z
    text_run = run_cli("send", "voice-local-processing", "--wave", "reminder", "--ignore-window", "--workers", "1",
                       env=env)
    assert text_run.exit_code == 0, text_run.output
    # The reminder is due 2025-03-25T07:00Z; the simulated clock has moved on a little since 03-10T07:00Z.
    assert re.search(r"sent (15 days|14 days 23 hours) ahead of the wave's time", text_run.stdout)
    assert "db time" not in text_run.stdout
    assert "db time" in run_cli("send", "voice-local-processing", "--wave", "reminder", "--ignore-window",
                                "--workers", "1", "--verbose", env=env).stdout


def test_notice_coverage_answers_who_was_told_in_time(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                      write_file: Callable[..., Path]) -> None:
    """status --json's notice_coverage (issue 23 item 7): told = a delivered notice of an `affected` wave before
    the cutoff (a bounce un-tells); in time = at least min_notice (7 days) before it; the others by why."""
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    env = {**KEY, "CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z", "CAMPAIGN_SMTP_URL": smtpd.url}
    assert run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", "--workers", "1",
                   env=env).exit_code == 0
    # The ledger now holds a sent notice for a1, a2, a3, a4 (a5's device is `save`: not affected). Make a2's
    # notice late (3 days before the cutoff), a3's bounced, a4's suppressed, and give a5 an affected device
    # with no notice at all.
    with engine.begin() as conn:
        conn.execute(text("UPDATE delivery SET sent_at = :t WHERE account_id = 'a2'"),
                     {"t": "2025-03-25 07:00:00.000000" if engine.dialect.name == "sqlite"
                      else "2025-03-25T07:00:00+00:00"})
        conn.execute(text("UPDATE delivery SET state = 'bounced' WHERE account_id = 'a3'"))
        conn.execute(text("UPDATE delivery SET state = 'suppressed', sent_at = NULL WHERE account_id = 'a4'"))
        conn.execute(text("UPDATE device_setting SET value = 'do_not_send' WHERE device_id = 'd6'"))
    out = json.loads(run_cli("status", "voice-local-processing", "--json", env=env).stdout)
    assert out["notice_coverage"] == {"affected_accounts": 5, "told_before_cutoff": 2, "told_in_time": 1,
                                      "not_told": {"bounced": 1, "failed": 0, "suppressed": 1, "never_sent": 1}}
    shown = run_cli("status", "voice-local-processing", env=env).stdout
    assert "2 of 5 (40 %) affected accounts before the cutoff, 1 in time" in shown
    assert "not told: 1 bounced, 1 suppressed, 1 never sent" in shown


def test_status_tells_waiting_for_the_send_window_from_sending(run_cli: CliRun, smtpd: SmtpServer,
                                                               write_file: Callable[..., Path]) -> None:
    """At 07:00 UTC Tokyo is inside its 09:00-20:00 window, Berlin and New York are not (issue 23 item 5)."""
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    env = {**KEY, "CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z", "CAMPAIGN_SMTP_URL": smtpd.url}
    assert run_cli("send", "voice-local-processing", "--wave", "notice", "--workers", "1", env=env).exit_code == 0
    detail = json.loads(run_cli("status", "voice-local-processing", "--json", env=env).stdout)["wave_detail"]
    assert (detail["notice"]["waiting_window"], detail["notice"]["waiting_retry"]) == (2, 0)
    line = next(x for x in run_cli("status", "voice-local-processing", env=env).stdout.splitlines()
                if x.strip().startswith("notice"))
    assert line.split()[1] == "waiting" and "pending 2, sent 2" in line
    assert line.endswith("(2 waiting for their send window)")


def test_unschedule_moves_a_cutoff_and_check_warns_those_told_the_old_one(
        run_cli: CliRun, engine: Engine, smtpd: SmtpServer, write_file: Callable[..., Path]) -> None:
    """issue 23 item 3: a scheduled campaign goes back to draft (its steps not yet run dropped, the ledger kept),
    its cutoff moves by `create --replace`, and those told the old date are named (cutoff-moved)."""
    imported(run_cli, write_file)
    path = definition(write_file)
    assert run_cli("create", str(path), env=KEY).exit_code == 0
    early = {**KEY, "CAMPAIGN_CLOCK": "2025-03-01T00:00:00Z"}
    assert run_cli("unschedule", "voice-local-processing", env=early).exit_code == 1  # a draft: nothing to do
    assert run_cli("schedule", "voice-local-processing", env=early).exit_code == 0
    sent = {**KEY, "CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z", "CAMPAIGN_SMTP_URL": smtpd.url}
    assert run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", "--workers", "1",
                   env=sent).exit_code == 0
    later = {**KEY, "CAMPAIGN_CLOCK": "2025-03-15T00:00:00Z"}
    frozen = run_cli("create", str(path), "--replace", env=later)
    assert frozen.exit_code == 1 and "unschedule voice-local-processing" in frozen.stderr
    assert run_cli("unschedule", "voice-local-processing", "--dry-run", env=later).exit_code == 0
    done = run_cli("unschedule", "voice-local-processing", env=later)
    assert done.exit_code == 0 and "back to draft" in done.stdout, done.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM campaign")).scalar_one() == "draft"
        assert conn.execute(text("SELECT name FROM step ORDER BY name")).scalars().all() == []
        notices = conn.execute(text("SELECT count(*) FROM delivery WHERE state = 'sent'")).scalar_one()
    assert notices == 4
    moved = definition(write_file, ('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2025-04-04T00:00:00-07:00"'),
                       name="moved.toml")
    replaced = run_cli("create", str(moved), "--replace", "--json", env=later)
    assert replaced.exit_code == 0, replaced.output
    warned = [w for w in json.loads(replaced.stdout)["warnings"] if w["code"] == "cutoff-moved"]
    assert warned and warned[0]["accounts"] == 4 and warned[0]["told"] == {"2025-03-28T07:00:00+00:00": 4}, warned
    code, out = check(run_cli, "voice-local-processing", env=later)
    assert code == 0 and "cutoff-moved" in codes(out["warnings"])
    assert run_cli("schedule", "voice-local-processing", env=later).exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM delivery")).scalar_one() == 4  # nobody told twice
        assert conn.execute(text("SELECT cutoff FROM campaign")).scalar_one() is not None


def test_a_cancelled_campaign_names_the_way_out(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file)
    assert run_cli("create", str(path), env=KEY).exit_code == 0
    assert run_cli("cancel", "voice-local-processing").exit_code == 0
    for args in (("create", str(path)), ("create", str(path), "--replace")):
        refused = run_cli(*args, env=KEY)
        assert refused.exit_code == 1 and "create it under a new slug" in refused.stderr


def test_unschedule_voids_the_approvals(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    imported(run_cli, write_file)
    path = definition(write_file, ("[approval]\nrequired = false", "[approval]\nrequired = true"))
    early = {**KEY, "CAMPAIGN_CLOCK": "2025-03-01T00:00:00Z"}
    assert run_cli("create", str(path), env=early).exit_code == 0
    assert run_cli("--actor", "dana", "approve", "voice-local-processing", env=early).exit_code == 0
    assert run_cli("schedule", "voice-local-processing", env=early).exit_code == 0
    assert run_cli("unschedule", "voice-local-processing", env=early).exit_code == 0
    standing = json.loads(run_cli("status", "voice-local-processing", "--json", env=early).stdout)["approval"]
    assert standing["approved"] is False and [a["by"] for a in standing["voided"]] == ["dana"]
    refused = run_cli("schedule", "voice-local-processing", env=early)
    assert refused.exit_code == 1 and "approval" in refused.stderr
    assert run_cli("--actor", "dana", "approve", "voice-local-processing", env=early).exit_code == 0
    assert run_cli("schedule", "voice-local-processing", env=early).exit_code == 0


def test_check_connect_opens_a_session_and_sends_nothing(run_cli: CliRun, write_file: Callable[..., Path],
                                                         smtpd_factory: Callable[..., SmtpServer]) -> None:
    """check --connect: connect, EHLO, (STARTTLS,) AUTH, QUIT against the relay; a refused login is smtp-auth, a
    relay nobody answers at is smtp-unreachable; the password is never shown (issue 23 item 1)."""
    imported(run_cli, write_file)
    path = definition(write_file)
    server = smtpd_factory(users={"campaign": "right-password-123"})
    relay = {**KEY, "CAMPAIGN_SMTP_URL": server.url, "CAMPAIGN_SMTP_USER": "campaign"}
    code, out = check(run_cli, str(path), "--connect", env={**relay, "CAMPAIGN_SMTP_PASSWORD": "right-password-123"})
    assert code == 0 and out["errors"] == [] and out["relay"]["problem"] is None
    assert "logged in as 'campaign'" in out["relay"]["detail"]
    assert server.connections == 1 and server.messages == []
    shown = run_cli("check", str(path), "--connect", env={**relay, "CAMPAIGN_SMTP_PASSWORD": "right-password-123"})
    assert shown.exit_code == 0 and "session opened" in shown.stdout

    wrong = run_cli("check", str(path), "--connect", "--json",
                    env={**relay, "CAMPAIGN_SMTP_PASSWORD": "wrong-password-456"})
    assert wrong.exit_code == 1 and "wrong-password-456" not in wrong.output
    out = json.loads(wrong.stdout)
    assert codes(out["errors"]) == ["smtp-auth"] and out["errors"][0]["relay"] == out["relay"]["where"]
    assert "login" in out["errors"][0]["message"] and server.messages == []

    nobody = {**KEY, "CAMPAIGN_SMTP_URL": f"smtp://127.0.0.1:{free_port()}"}
    code, out = check(run_cli, str(path), "--connect", env=nobody)
    assert code == 1 and codes(out["errors"]) == ["smtp-unreachable"]
    assert "could not connect" in out["errors"][0]["message"]
    code, out = check(run_cli, str(path), env=nobody)  # without --connect the relay is not tried
    assert code == 0 and "relay" not in out


def test_send_dry_run_runs_the_preflight(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    """A missing bounce key fails `send --dry-run` (exit 2, nothing written), as it would fail the real send on the
    day; with the key the dry run passes and prints the warnings (issue 23 item 1)."""
    imported(run_cli, write_file)
    late = definition(write_file, ('min_notice = "7d"', 'min_notice = "20d"'))  # notice-too-late: a warning
    assert run_cli("create", str(late), env=KEY).exit_code == 0
    clock = {"CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z"}
    before = table_counts(engine)
    dry = run_cli("send", "voice-local-processing", "--wave", "notice", "--dry-run", env=clock)
    assert dry.exit_code == 2 and "error [missing-secret]" in dry.output and "CAMPAIGN_BOUNCE_KEY" in dry.output
    assert "the send would fail" in dry.stderr and table_counts(engine) == before
    as_json = run_cli("send", "voice-local-processing", "--wave", "notice", "--dry-run", "--json", env=clock)
    out = json.loads(as_json.stdout)
    assert as_json.exit_code == 2 and out["error"]["code"] == "preflight"
    assert codes(out["preflight"]["errors"]) == ["missing-secret"] and out["preview"]["due_now"] >= 0
    ok = run_cli("send", "voice-local-processing", "--wave", "notice", "--dry-run", "--json", env={**KEY, **clock})
    assert ok.exit_code == 0 and json.loads(ok.stdout)["preflight"]["errors"] == []
    assert codes(json.loads(ok.stdout)["preflight"]["warnings"]) == ["notice-too-late"]
    assert "warning [notice-too-late]" in run_cli("send", "voice-local-processing", "--wave", "notice", "--dry-run",
                                                  env={**KEY, **clock}).stdout


def test_after_the_flip_the_audience_checks_rest(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                 write_file: Callable[..., Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Once the flip has switched everyone, nobody holds the old value: that is the campaign working, not an
    `unknown-value` error — not for check, not for the confirmation's dry run, not for the scheduler's watch."""
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    env = {**KEY, "CAMPAIGN_SMTP_URL": smtpd.url}
    assert run_cli("schedule", "voice-local-processing", env={**env, "CAMPAIGN_CLOCK": "2025-03-01T00:00:00Z"}
                   ).exit_code == 0
    assert run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", "--workers", "1",
                   env={**env, "CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z"}).exit_code == 0
    after = {**env, "CAMPAIGN_CLOCK": "2025-03-28T08:00:00Z"}
    flipped = run_cli("flip", "voice-local-processing", "--json", env=after)
    assert flipped.exit_code == 0, flipped.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM device_setting WHERE value = 'do_not_send'")).scalar() == 0
    code, out = check(run_cli, "voice-local-processing", env=after)
    assert code == 0, out
    assert not {"unknown-value", "empty-audience"} & set(codes(out["errors"] + out["warnings"]))
    dry = run_cli("send", "voice-local-processing", "--wave", "confirmation", "--dry-run", "--json",
                  env={**after, "CAMPAIGN_CLOCK": "2025-03-28T09:30:00Z"})
    assert dry.exit_code == 0, dry.output
    with caplog.at_level(logging.ERROR):
        assert run_cli("scheduler", "run", "--once", env=after).exit_code == 0
    assert "preflight: would fail" not in caplog.text
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_event WHERE action = 'preflight.failed'")).scalar() == 0


def test_status_rate_counts_the_last_minute_and_a_finished_wave_reads_zero(
        run_cli: CliRun, smtpd: SmtpServer, write_file: Callable[..., Path]) -> None:
    """status's rate: deliveries sent in the last minute; a wave done before that minute began reads 0 without
    counting its ledger (the same figure: sending again marks a wave `sending` first)."""
    imported(run_cli, write_file)
    assert run_cli("create", str(definition(write_file)), env=KEY).exit_code == 0
    env = {**KEY, "CAMPAIGN_CLOCK": "2025-03-14T07:00:00Z", "CAMPAIGN_SMTP_URL": smtpd.url}
    assert run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", "--workers", "1",
                   env=env).exit_code == 0

    def notice(clock: str) -> dict:
        out = run_cli("status", "voice-local-processing", "--json", env={**env, "CAMPAIGN_CLOCK": clock})
        return json.loads(out.stdout)["wave_detail"]["notice"]

    now = notice("2025-03-14T07:00:30Z")
    assert now["state"] == "done" and now["rate_per_second"] == round(4 / 60, 2)  # a1..a4, sent in that minute
    assert notice("2025-03-14T07:05:00Z")["rate_per_second"] == 0
