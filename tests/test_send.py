"""Sending a wave over a real SMTP server: once per account (G2), nothing lost (G3), suppression (G4),
broken mail caught (G5), retries, bounces, pauses, windows, crashes — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import ROOT, CliRun, table_counts
from tests.pgserver import OwnPostgres as _OwnPostgres
from tests.pgserver import own_cli as _own_cli
from tests.smtpd import CLOSING, HANGUP, NO_SUCH_USER, TEMPFAIL, SmtpServer

SLUG = "voice-local-processing"
ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            + "".join(f"a{i:03d},user{i}@example.com,User {i},{loc},{tz},{c}\n" for i, (loc, tz, c) in enumerate(
                [("en-US", "America/New_York", "US"), ("de-DE", "Europe/Berlin", "DE"),
                 ("ja-JP", "Asia/Tokyo", "JP"), ("es-US", "America/Los_Angeles", "US")] * 10)))
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           + "".join(f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(40)))


def definition(tmp: Path, window: str = "", limits: str = "", cutoff_in: dt.timedelta = dt.timedelta(days=10)) -> Path:
    cutoff = (dt.datetime.now(dt.UTC) + cutoff_in).replace(microsecond=0).isoformat()
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = text_.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    start = text_.index("[send_window]")
    end = text_.index("[context]")
    text_ = text_[:start] + window + "\n" + (limits or (
        "[limits]\nrate_per_second = 2000\nconcurrency = 4\nmax_attempts = 3\nretry_base_seconds = 0.01\n"
        "retry_max_seconds = 0.02\npause_on_failure_rate = 0.9\n")) + "\n" + text_[end:]
    path = tmp / "def.toml"
    path.write_text(text_, encoding="utf-8")
    return path


@pytest.fixture
def ready(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path, smtpd: SmtpServer) -> Callable[..., None]:
    """Import 40 accounts (one affected device each) and create the campaign; returns a re-creator."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0

    def create(**kw: object) -> None:
        result = run_cli("create", str(definition(tmp_path, **kw)), "--replace")  # type: ignore[arg-type]
        assert result.exit_code == 0, result.output
    create()
    return create


def send(run_cli: CliRun, smtpd: SmtpServer, *args: str, wave: str = "notice") -> object:
    return run_cli("send", SLUG, "--wave", wave, "--workers", "1", *args, env={"CAMPAIGN_SMTP_URL": smtpd.url})


def status(run_cli: CliRun) -> dict[str, object]:
    result = run_cli("status", SLUG, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def notice(run_cli: CliRun) -> dict[str, int]:
    return status(run_cli)["waves"]["notice"]  # type: ignore[index,no-any-return]


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def test_send_everyone_once(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object) -> None:
    result = send(run_cli, smtpd)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    got = smtpd.messages
    assert sorted(m.recipients[0] for m in got) == sorted(f"user{i}@example.com" for i in range(40))
    st = status(run_cli)
    assert st["waves"]["notice"] == {"pending": 0, "sending": 0, "sent": 40, "failed": 0, "bounced": 0,  # type: ignore[index]
                                     "suppressed": 0, "skipped": 0, "expired": 0}
    assert st["waves"]["reminder"] == dict.fromkeys(  # type: ignore[index]
        ("pending", "sending", "sent", "failed", "bounced", "suppressed", "skipped", "expired"), 0)
    assert st["flip"] == {"changed": 0, "held_back": 0, "rolled_back": 0, "left": 0}
    # The Message-ID each message went out with is the one stored, per delivery.
    stored = dict(rows(engine, "SELECT email, message_id FROM delivery WHERE state = 'sent'"))
    for m in got:
        msg = email.message_from_bytes(m.data, policy=default)
        assert str(msg["Message-ID"]) == stored[m.recipients[0]]
    assert len(set(stored.values())) == 40
    # Sending again sends nobody anything (G2).
    again = send(run_cli, smtpd)
    assert again.exit_code == 0  # type: ignore[attr-defined]
    assert len(smtpd.messages) == 40
    assert smtpd.connections <= 4  # connections are reused, one pool per worker
    actions = [a for (a,) in rows(engine, "SELECT action FROM audit_event WHERE action LIKE 'wave.%' ORDER BY id")]
    assert actions == ["wave.send", "wave.sent", "wave.send", "wave.sent"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_broken_smtp_url_is_a_clear_error_and_leaves_nothing_sending(db_url: str, engine: Engine, ready: object,
                                                                       workdir: Path, workers: str) -> None:
    # As the scheduler runs it: a process of its own (a worker's failure came back as a RemoteTraceback).
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SMTP_URL": "smtp://[::1",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    before = table_counts(engine)
    done = subprocess.run([sys.executable, "-m", "campaign", "send", SLUG, "--wave", "notice", "--workers", workers],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "CAMPAIGN_SMTP_URL 'smtp://[::1': not a valid URL" in done.stderr
    assert "Traceback" not in done.stderr
    assert rows(engine, "SELECT COUNT(*) FROM delivery WHERE state = 'sending'") == [(0,)]
    assert table_counts(engine) == before


def test_a_relay_echoing_a_secret_leaves_no_trace_of_it(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                         ready: object, tmp_path: Path) -> None:
    """Issue 21 item 1 (G11): a reply carrying a secret the process holds is stored and shown masked —
    the delivery's error, the suppression's reason, status, log, the report and the person's story."""
    secret = "imap-secret-pw-0123456789"
    smtpd.script("user1@example.com", [f"550 5.1.1 no such user {secret}\x1b]0;owned\x07"])
    smtpd.script("user2@example.com", [f"451 4.3.0 later {secret}"] * 5)
    env = {"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_IMAP_PASSWORD": secret}
    assert run_cli("send", SLUG, "--wave", "notice", "--workers", "1", env=env).exit_code == 0
    out = tmp_path / "r.html"
    shown = [run_cli(*args, env=env).output for args in (
        ("status", SLUG), ("status", SLUG, "--json"), ("log", SLUG), ("log", SLUG, "--json"),
        ("report", SLUG, "--format", "jsonl"), ("report", SLUG, "--account", "a001"),
        ("report", SLUG, "--account", "a002", "--json"), ("suppress", "list"),
        ("report", SLUG, "--format", "html", "--out", str(out)))]
    shown.append(out.read_text(encoding="utf-8"))
    for text_ in shown:
        assert secret not in text_
    assert any("no such user ***" in t for t in shown)
    assert any("later ***" in t for t in shown)
    stored = " ".join(str(v) for table in table_counts(engine).values() for row in table for v in row)
    assert secret not in stored and "\x1b" not in stored and "\x07" not in stored
    assert "no such user ***" in stored


def test_suppressed_never_mailed(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object) -> None:
    assert run_cli("suppress", "add", "USER3@example.com", "--reason", "asked").exit_code == 0
    assert send(run_cli, smtpd).exit_code == 0  # type: ignore[attr-defined]
    assert "user3@example.com" not in {m.recipients[0] for m in smtpd.messages}
    assert notice(run_cli)["suppressed"] == 1 and notice(run_cli)["sent"] == 39
    assert rows(engine, "SELECT attempts FROM delivery WHERE email = 'user3@example.com'") == [(0,)]


def test_retries_bounces_and_drops(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                   ready: Callable[..., None]) -> None:
    # max_attempts 5: user1 may also meet the 421 and the hang-up below (they hit whoever comes next),
    # and still get through on its last try.
    ready(limits="[limits]\nrate_per_second = 2000\nconcurrency = 4\nmax_attempts = 5\nretry_base_seconds = 0.01\n"
                 "retry_max_seconds = 0.02\npause_on_failure_rate = 0.9\n")
    smtpd.script("user1@example.com", [TEMPFAIL, TEMPFAIL])          # then accepted
    smtpd.script("user2@example.com", [NO_SUCH_USER])                # permanent: bounced and suppressed
    smtpd.script("user4@example.com", [TEMPFAIL] * 10)               # never: failed after max_attempts (5)
    smtpd.script(None, [CLOSING], at="DATA")                         # a 421 closes one connection
    smtpd.script(None, [HANGUP], at="MAIL")                          # and one hangs up
    result = send(run_cli, smtpd)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    counts = notice(run_cli)
    assert (counts["sent"], counts["bounced"], counts["failed"], counts["pending"]) == (38, 1, 1, 0)
    (attempts,) = rows(engine, "SELECT attempts FROM delivery WHERE email = 'user1@example.com'")[0]
    assert 3 <= attempts <= 5
    state, error = rows(engine, "SELECT state, last_error FROM delivery WHERE email = 'user2@example.com'")[0]
    assert state == "bounced" and "550" in str(error)
    reason, source = rows(engine, "SELECT reason, source FROM suppression WHERE email = 'user2@example.com'")[0]
    assert source == "bounce" and "550" in str(reason)
    assert rows(engine, "SELECT state, attempts FROM delivery WHERE email = 'user4@example.com'") == [("failed", 5)]
    delivered = Counter(m.recipients[0] for m in smtpd.messages)
    assert max(delivered.values()) == 1 and len(delivered) == 38


def test_wave_pauses_itself_when_the_relay_is_broken(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                     ready: Callable[..., None]) -> None:
    ready(limits="[limits]\nrate_per_second = 2000\nconcurrency = 2\nmax_attempts = 6\n"
                 "retry_base_seconds = 0.01\nretry_max_seconds = 0.02\npause_on_failure_rate = 0.5\n")
    for i in range(40):
        smtpd.script(f"user{i}@example.com", [TEMPFAIL] * 10)
    result = send(run_cli, smtpd)
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "the wave paused" in result.stderr  # type: ignore[attr-defined]
    st = status(run_cli)
    detail = st["wave_detail"]["notice"]  # type: ignore[index]
    assert detail["state"] == "paused" and "attempts failed" in detail["paused_reason"]
    assert notice(run_cli)["sent"] == 0
    # A paused wave refuses to send until resumed.
    again = send(run_cli, smtpd)
    assert again.exit_code == 1 and "resume" in again.stderr  # type: ignore[attr-defined]
    assert run_cli("resume", SLUG).exit_code == 0
    assert status(run_cli)["wave_detail"]["notice"]["state"] == "waiting"  # type: ignore[index]


def test_dry_run_changes_nothing(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object,
                                 db_url: str) -> None:
    before = table_counts(engine)
    digest = hashlib.sha256(Path(db_url.removeprefix("sqlite:///")).read_bytes()).hexdigest() \
        if db_url.startswith("sqlite") else None
    result = send(run_cli, smtpd, "--dry-run")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "would send 40 messages now" in result.stdout  # type: ignore[attr-defined]
    assert smtpd.messages == []
    assert table_counts(engine) == before
    if digest is not None:
        engine.dispose()
        assert hashlib.sha256(Path(db_url.removeprefix("sqlite:///")).read_bytes()).hexdigest() == digest


def test_send_window_waits_and_ignore_window_sends(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                   ready: Callable[..., None]) -> None:
    # A window that is closed now in every zone of the test accounts is hard to pick; use one that is
    # open for one hour of the day: most recipients are outside it.
    hour = dt.datetime.now(dt.UTC).hour
    start = f"{(hour + 12) % 24:02d}:00"
    end = f"{(hour + 13) % 24:02d}:00"
    ready(window=f'[send_window]\nstart = "{start}"\nend = "{end}"\n')
    result = send(run_cli, smtpd)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    waiting = notice(run_cli)["pending"]
    assert waiting > 0 and "wait for their recipient's send window" in result.stdout  # type: ignore[attr-defined]
    assert len(smtpd.messages) == 40 - waiting
    assert rows(engine, "SELECT COUNT(*) FROM delivery WHERE state = 'pending' AND not_before IS NULL") == [(0,)]
    result = send(run_cli, smtpd, "--ignore-window")
    assert result.exit_code == 0
    assert notice(run_cli)["sent"] == 40 and len(smtpd.messages) == 40


def test_left_the_audience_is_skipped(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object,
                                      write_file: Callable[..., Path]) -> None:
    assert send(run_cli, smtpd, "--dry-run").exit_code == 0  # type: ignore[attr-defined]
    # Materialize, then a person changes the setting before their message goes out.
    from campaign import db
    from campaign.campaigns import get
    from campaign.store import audience, deliveries
    with db.write(engine) as conn:
        c = get(conn, SLUG)
        d = c.definition
        wave_id = conn.execute(text("SELECT id FROM wave WHERE name = 'notice'")).scalar_one()
        deliveries.materialize(conn, c.id, wave_id, audience.accounts(d, c.id, "affected"), d.waves[0].expires,
                               db.utcnow())
    changed = DEVICES.replace("d005,a005,Room 5,Echo Show 10,do_not_send", "d005,a005,Room 5,Echo Show 10,save")
    assert run_cli("import", "devices", str(write_file("d2.csv", changed))).exit_code == 0
    assert send(run_cli, smtpd).exit_code == 0  # type: ignore[attr-defined]
    assert notice(run_cli)["skipped"] == 1 and notice(run_cli)["sent"] == 39
    assert "user5@example.com" not in {m.recipients[0] for m in smtpd.messages}


def test_expired_wave_is_never_sent(run_cli: CliRun, smtpd: SmtpServer, ready: Callable[..., None]) -> None:
    ready(cutoff_in=dt.timedelta(seconds=-5))
    result = send(run_cli, smtpd)
    assert result.exit_code == 1 and "expired" in result.stderr  # type: ignore[attr-defined]
    assert smtpd.messages == []


def test_broken_template_during_send_pauses_the_wave(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                     ready: object, tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    shutil.copytree(ROOT / "templates", templates)
    path = templates / SLUG / "ja-JP" / "notice.txt.j2"
    # A template that no longer loads (edited after `create`): no message of that locale can be built. Sent from
    # the folder as a campaign created before versions were kept is (one with a kept version sends those files).
    path.write_text(path.read_text(encoding="utf-8").replace("{{", "{% if %}{{", 1), encoding="utf-8")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM version_file"))
    result = run_cli("send", SLUG, "--wave", "notice", "--workers", "1",
                     env={"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_TEMPLATES": str(templates)})
    assert result.exit_code == 1 and "syntax error" in result.stderr
    assert str(path) in result.stderr
    sent_to = {m.recipients[0] for m in smtpd.messages}
    ja = {f"user{i}@example.com" for i in range(2, 40, 4)}
    assert not sent_to & ja  # no Japanese message went out broken
    assert notice(run_cli)["pending"] >= 1


# One person's data breaks their message (issue 21 item 8): a macro that recurses without end for one name, and
# a message above max_message_bytes for another. Those two fail, with why; everyone else is sent.
BREAKS_FOR_TWO = ('{% macro deeper(n) %}{{ deeper(n + 1) }}{% endmacro %}'
                  '{% if account.name == "User 4" %}{{ deeper(1) }}{% endif %}'
                  '{% if account.name == "User 8" %}{{ "x" * 2000000 }}{% endif %}')


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_message_that_fails_for_one_account_fails_alone(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                         ready: object, tmp_path: Path, workers: str) -> None:
    templates = tmp_path / "tpl"
    shutil.copytree(ROOT / "templates", templates)
    path = templates / SLUG / "en-US" / "notice.txt.j2"
    path.write_text(BREAKS_FOR_TWO + path.read_text(encoding="utf-8"), encoding="utf-8")
    env = {"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_TEMPLATES": str(templates)}
    # Made a version of the campaign (its samples, for the first account of each locale, still render): what
    # schedule and send build from is the version kept at `create`, not the folder.
    recreated = run_cli("create", str(definition(tmp_path)), "--replace", env=env)
    assert recreated.exit_code == 0, recreated.output

    # schedule renders every recipient first and refuses, naming both accounts, before anything is frozen.
    refused = run_cli("schedule", SLUG, env=env)
    assert refused.exit_code == 2, refused.output
    assert "account a004:" in refused.stderr and "RecursionError" in refused.stderr
    assert f"{path}:" in refused.stderr
    assert "account a008:" in refused.stderr and "max_message_bytes" in refused.stderr
    assert "Traceback" not in refused.output
    assert status(run_cli)["state"] == "draft"

    result = run_cli("send", SLUG, "--wave", "notice", "--workers", workers, env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    counts = notice(run_cli)
    assert counts["sent"] == 38 and counts["failed"] == 2 and counts["sending"] == 0 and counts["pending"] == 0
    assert {m.recipients[0] for m in smtpd.messages} == {f"user{i}@example.com" for i in range(40)} - {
        "user4@example.com", "user8@example.com"}
    errors = dict(rows(engine, "SELECT account_id, last_error FROM delivery WHERE state = 'failed'"))
    assert set(errors) == {"a004", "a008"}
    assert "RecursionError" in str(errors["a004"]) and f"{path}:" in str(errors["a004"])
    assert "more than [limits] max_message_bytes (1,048,576)" in str(errors["a008"])


def test_create_refuses_a_sample_that_fails_naming_its_account(run_cli: CliRun, ready: object, tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    shutil.copytree(ROOT / "templates", templates)
    path = templates / SLUG / "en-US" / "notice.txt.j2"
    path.write_text(BREAKS_FOR_TWO.replace("User 4", "User 0") + path.read_text(encoding="utf-8"), encoding="utf-8")
    refused = run_cli("create", str(definition(tmp_path)), "--replace", env={"CAMPAIGN_TEMPLATES": str(templates)})
    assert refused.exit_code == 2, refused.output
    assert "account a000:" in refused.stderr and "RecursionError" in refused.stderr
    assert "Traceback" not in refused.output


def test_a_refused_send_says_its_outcome_as_a_stable_code(run_cli: CliRun, smtpd: SmtpServer,
                                                          ready: Callable[..., None]) -> None:
    """Issue 22: with --json, a failing command prints {"error": {"code", "message"}} (one JSON document):
    the scheduler decides a step's outcome by the code, never by the message's words."""
    def code(*args: str) -> str:
        result = run_cli("send", SLUG, "--wave", "notice", "--workers", "1", "--json", *args,
                         env={"CAMPAIGN_SMTP_URL": smtpd.url})
        assert result.exit_code == 1, result.output
        error = json.loads(result.stdout)["error"]
        assert error["message"] and error["message"] in result.stderr
        return str(error["code"])

    ready(cutoff_in=dt.timedelta(seconds=-5))  # the definition replaced: its notice expired
    assert code() == "expired"
    ready()
    assert run_cli("pause", SLUG).exit_code == 0
    assert code() == "paused"
    assert run_cli("resume", SLUG).exit_code == 0
    assert run_cli("cancel", SLUG).exit_code == 0
    assert code() == "cancelled"
    unknown = run_cli("send", SLUG, "--wave", "nonesuch", "--json")
    assert unknown.exit_code == 2 and json.loads(unknown.stdout)["error"]["code"] == "usage"
    assert smtpd.messages == []


def test_the_scheduler_reads_codes_not_words() -> None:
    from campaign.cutoff.scheduling import _outcome
    worded = "campaign: wave 'notice' expired, paused, cancelled and rolled back"
    assert _outcome('{"error": {"code": "expired", "message": "gone"}}', worded) == ("expired", "gone")
    assert _outcome('{"error": {"code": "not_approved", "message": "wait"}}', worded) == ("not_approved", "wait")
    assert _outcome("", worded) == ("failed", worded.removeprefix("campaign: "))  # no code: tried again
    assert _outcome("not json", "") == ("failed", "failed without a message")


def test_pause_resume_cancel(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object) -> None:
    assert run_cli("pause", SLUG).exit_code == 0
    assert status(run_cli)["state"] == "paused"
    refused = send(run_cli, smtpd)
    assert refused.exit_code == 1 and "paused" in refused.stderr  # type: ignore[attr-defined]
    assert run_cli("resume", SLUG).exit_code == 0
    assert status(run_cli)["state"] == "draft"
    assert run_cli("cancel", SLUG).exit_code == 0
    refused = send(run_cli, smtpd)
    assert refused.exit_code == 1 and "cancelled" in refused.stderr  # type: ignore[attr-defined]
    assert smtpd.messages == []
    actions = [a for (a,) in rows(engine, "SELECT action FROM audit_event WHERE action LIKE 'campaign.%' ORDER BY id")]
    assert actions[-3:] == ["campaign.pause", "campaign.resume", "campaign.cancel"]


def _spawn_send(db_url: str, smtpd: SmtpServer, cwd: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SMTP_URL": smtpd.url,
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_ACTOR": "tester"}
    return subprocess.Popen([sys.executable, "-m", "campaign", "send", SLUG, "--wave", "notice", "--workers",
                             str(workers)], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


SLOW = ("[limits]\nrate_per_second = 40\nconcurrency = 4\nmax_attempts = 3\nretry_base_seconds = 0.01\n"
        "retry_max_seconds = 0.02\npause_on_failure_rate = 0.9\n")


@pytest.mark.slow
def test_kill_9_midway_then_resume(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: Callable[..., None],
                                   db_url: str, tmp_path: Path) -> None:
    ready(limits=SLOW.replace("rate_per_second = 40", "rate_per_second = 10"))  # 4 s for all 40: time to kill
    proc = _spawn_send(db_url, smtpd, tmp_path)
    deadline = time.monotonic() + 60
    while len(smtpd.messages) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert 5 <= len(smtpd.messages) < 40
    assert rows(engine, "SELECT COUNT(*) FROM delivery WHERE state = 'sending'")[0][0] > 0  # its leases
    result = send(run_cli, smtpd)  # resumes at once: the dead worker's leases are given back
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    counts = notice(run_cli)
    assert counts["sent"] == 40 and counts["pending"] == counts["sending"] == 0
    delivered = Counter(m.recipients[0] for m in smtpd.messages)
    assert len(delivered) == 40
    again = [addr for addr, n in delivered.items() if n > 1]
    assert len(again) <= 4 and all(n <= 2 for n in delivered.values())  # at most the connections in flight
    ids: dict[str, set[str]] = {}
    for m in smtpd.messages:
        ids.setdefault(m.recipients[0], set()).add(str(email.message_from_bytes(m.data, policy=default)["Message-ID"]))
    assert all(len(v) == 1 for v in ids.values())  # a message sent again has the same Message-ID


def test_two_senders_at_once_send_each_message_once(run_cli: CliRun, smtpd: SmtpServer, ready: Callable[..., None],
                                                    db_url: str, tmp_path: Path) -> None:
    ready(limits=SLOW.replace("rate_per_second = 40", "rate_per_second = 400"))
    first = _spawn_send(db_url, smtpd, tmp_path, workers=2)
    second = _spawn_send(db_url, smtpd, tmp_path, workers=1)
    for proc in (first, second):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    delivered = Counter(m.recipients[0] for m in smtpd.messages)
    assert len(delivered) == 40 and set(delivered.values()) == {1}
    assert notice(run_cli)["sent"] == 40


class _SlowTransport:
    """Accepts everything, each message taking `seconds`: a slow relay."""

    concurrency = 4

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[str] = []

    async def __aenter__(self) -> _SlowTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, envelope: object, gate: Any = None) -> object:
        import asyncio

        from campaign.delivery.transport import Outcome
        await asyncio.sleep(self.seconds)
        if gate is not None:
            await gate()
        self.sent.append(envelope.recipients[0])  # type: ignore[attr-defined]
        return Outcome("sent")


def _notice_job(engine: Engine, db_url: str, smtpd: SmtpServer) -> Any:
    """A worker's job for the notice wave, outside the send window's rule."""
    from campaign.config import load_config
    from campaign.delivery.job import Job, SendOptions

    config = load_config({"database_url": db_url, "templates": str(ROOT / "templates"), "actor": "tester",
                          "smtp_url": smtpd.url})
    [(campaign_id, wave_id)] = rows(engine, "SELECT campaign_id, id FROM wave WHERE name = 'notice'")
    return Job(config, int(campaign_id), SLUG, "notice", int(wave_id),  # type: ignore[call-overload]
               SendOptions(ignore_window=True))


def test_who_counts_as_a_dead_worker(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object,
                                     db_url: str) -> None:
    # A worker's pid is checked only by a process sharing its process table (same host name, boot and PID
    # namespace); another machine's worker is left to its lease, unless silent for `forget_after`.
    from campaign import db
    from campaign.delivery import sending
    from campaign.delivery.heartbeat import machine
    from campaign.delivery.job import Timings
    from campaign.delivery.worker import Worker
    from campaign.store import deliveries
    from campaign.store import workers as worker_rows

    job = _notice_job(engine, db_url, smtpd)
    campaign_id, wave_id = job.campaign_id, job.wave_id
    now = db.utcnow()
    with db.write(engine) as conn:
        sending.prepare(conn, SLUG, "notice", True, now)
    gone = 2 ** 22 + 12345  # above any pid this machine gives out (pid_max is at most 2**22)
    me = machine()
    owners = {"here-dead": (me, gone, now), "elsewhere": (me.split("#")[0] + "#000000000000", gone, now),
              "silent": ("far-away#0", 1, now - Timings().forget_after - dt.timedelta(seconds=1))}
    with db.write(engine) as conn:
        for owner, (host, pid, beat) in owners.items():
            worker_rows.beat(conn, owner, host, pid, int(campaign_id), int(wave_id), beat)
            deliveries.claim(conn, int(wave_id), owner, 3, now, True)
    worker = Worker(engine, job)
    try:
        with db.write(engine) as conn:
            worker.heart.beat_tx(conn, [], now)
    finally:
        worker.db.close()
    left = {r[0] for r in rows(engine, "SELECT id FROM worker")}
    assert left == {"elsewhere", worker.id}
    held = Counter(r[0] for r in rows(engine, "SELECT lease_owner FROM delivery WHERE state = 'sending'"))
    assert held == {"elsewhere": 3}  # its leases run out in their own time; the other two were given back


def test_a_worker_left_without_work_ends_soon_after_the_others_messages_are_recorded(
        run_cli: CliRun, engine: Engine, smtpd: SmtpServer, ready: object, db_url: str) -> None:
    """Every delivery is under way with another live worker (this process): the worker finds nothing to claim
    and waits for them, looking again soon, then less often. Once they are recorded it ends, rather than
    sleeping a second first (which held every send of several workers up by up to a second at its end).

    The others' messages are recorded once the worker has looked twice (each look is seen as it happens); it
    ends at its next look, which comes within 0.9 s of the record: 0.11 s when the machine is idle (the looks
    0.05, 0.075, then 0.11 s apart), and a second's sleep before — the bound leaves most of a second to a loaded
    machine."""
    import threading

    from campaign import db
    from campaign.delivery import sending
    from campaign.delivery.heartbeat import machine
    from campaign.delivery.worker import Worker
    from campaign.store import deliveries
    from campaign.store import workers as worker_rows

    job = _notice_job(engine, db_url, smtpd)
    campaign_id, wave_id = job.campaign_id, job.wave_id
    now = db.utcnow()
    with db.write(engine) as conn:
        sending.prepare(conn, SLUG, "notice", True, now)
        worker_rows.beat(conn, "other", machine(), os.getpid(), int(campaign_id), int(wave_id), now)
        held = deliveries.claim(conn, int(wave_id), "other", 100, now, True)
    assert len(held) == 40
    looks: list[tuple[float, int]] = []  # when each look of the worker began, and what it found under way
    looked_twice = threading.Event()
    worker = Worker(engine, job)
    outlook = worker.feed.look

    async def look() -> deliveries.Outlook:  # this worker's looks, seen as they happen
        began = time.monotonic()
        seen = await outlook()
        looks.append((began, seen.in_flight))
        if len(looks) == 2:
            looked_twice.set()
        return seen

    worker.feed.look = look  # type: ignore[method-assign]
    recorded: list[tuple[float, int]] = []  # when the record was committed, and the looks that had begun by then

    def record() -> None:
        if looked_twice.wait(60):
            with db.write(engine) as conn:
                deliveries.record(conn, "other", [deliveries.Result(c.id, "sent", db.utcnow(),
                                                                    message_id=f"<{c.id}@x>") for c in held])
            recorded.append((time.monotonic(), len(looks)))

    recorder = threading.Thread(target=record)
    recorder.start()
    try:
        worker.run_to_end()
    finally:
        looked_twice.set()
        recorder.join()
    assert worker.attempted == 0 and smtpd.messages == []
    assert rows(engine, "SELECT state, count(*) FROM delivery GROUP BY state") == [("sent", 40)]
    assert [n for _, n in looks[:2]] == [40, 40]  # twice it found the others' messages under way, and waited
    ((at, before),) = recorded
    # It ended at its first look after the record (or the one after, if one was under way at that moment).
    assert looks[-1][1] == 0 and len(looks) - before in (1, 2), looks
    assert looks[-1][0] - at < 0.9, (looks, at)


def test_machine_differs_across_pid_namespaces() -> None:
    code = "from campaign.delivery.heartbeat import machine; print(machine())"
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here.startswith(os.uname().nodename + "#")
    unshare = shutil.which("unshare")
    proc = subprocess.run([unshare or "unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                          capture_output=True, text=True) if unshare else None
    if proc is None or proc.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"unshare --pid is needed for this test under CI: {proc.stderr if proc else 'not found'}")
        pytest.skip("unshare --pid is not permitted here")
    there = proc.stdout.strip()
    assert there.split("#")[0] == here.split("#")[0] and there != here


def test_leases_are_renewed_while_a_slow_batch_is_in_flight(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                           ready: object, db_url: str) -> None:
    import threading

    from campaign import db
    from campaign.config import load_config
    from campaign.delivery import sending
    from campaign.store import deliveries
    timings = sending.Timings(lease=dt.timedelta(seconds=1.2), heartbeat=0.1)
    config = load_config({"database_url": db_url, "templates": str(ROOT / "templates"), "actor": "tester"})
    slow = _SlowTransport(0.4)  # 40 messages, 4 at a time: about 4 s, over three leases long
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(sending.send_wave(
        engine, config, SLUG, "notice", sending.SendOptions(ignore_window=True, workers=1, timings=timings),
        transport=slow)))
    thread.start()
    taken = 0
    wave_id = rows(engine, "SELECT id FROM wave WHERE name = 'notice'")[0][0]
    while thread.is_alive():  # another worker looking for leases that ran out
        with db.write(engine) as conn:
            taken += deliveries.reclaim(conn, int(wave_id), db.utcnow())  # type: ignore[call-overload]
        time.sleep(0.05)
    thread.join()
    assert taken == 0
    assert sorted(slow.sent) == sorted(f"user{i}@example.com" for i in range(40))
    assert notice(run_cli)["sent"] == 40


# -- a lost database: a PostgreSQL server of the test's own, restarted or stopped in the middle of a send -----

def _ready_on(run: CliRun, tmp_path: Path, limits: str) -> None:
    (tmp_path / "a.csv").write_text(ACCOUNTS, encoding="utf-8")
    (tmp_path / "d.csv").write_text(DEVICES, encoding="utf-8")
    for args in (("db", "upgrade"), ("import", "accounts", str(tmp_path / "a.csv")),
                 ("import", "devices", str(tmp_path / "d.csv")), ("create", str(definition(tmp_path, limits=limits)))):
        result = run(*args)
        assert result.exit_code == 0, result.output


def _delivered_once_but_in_flight(smtpd: SmtpServer, in_flight: int) -> None:
    """Everyone got the wave; at most `in_flight` got it twice, with the same Message-ID (G2)."""
    delivered = Counter(m.recipients[0] for m in smtpd.messages)
    assert sorted(delivered) == sorted(f"user{i}@example.com" for i in range(40))
    assert sum(n - 1 for n in delivered.values()) <= in_flight
    ids: dict[str, set[str]] = {}
    for m in smtpd.messages:
        ids.setdefault(m.recipients[0], set()).add(str(email.message_from_bytes(m.data, policy=default)["Message-ID"]))
    assert all(len(v) == 1 for v in ids.values())


@pytest.mark.postgres
def test_postgres_restarting_mid_send_does_not_hang_it(own_postgres: _OwnPostgres, smtpd: SmtpServer,
                                                       tmp_path: Path) -> None:
    run = _own_cli(own_postgres.url)
    _ready_on(run, tmp_path, SLOW.replace("rate_per_second = 40", "rate_per_second = 10"))  # 4 s for 40
    proc = _spawn_send(own_postgres.url, smtpd, tmp_path)
    deadline = time.monotonic() + 60
    while len(smtpd.messages) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    own_postgres.pg_ctl("-l", f"'{own_postgres.data}/server.log'", "-m", "fast", "restart")  # connections cut
    restarted = len(smtpd.messages)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert restarted < 40  # the restart came in the middle of the send
    assert b"database connection lost" in err  # it noticed, and went on
    st = json.loads(run("status", SLUG, "--json").stdout)
    assert st["waves"]["notice"]["sent"] == 40
    assert st["waves"]["notice"]["pending"] == st["waves"]["notice"]["sending"] == 0
    _delivered_once_but_in_flight(smtpd, 4)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_gone_for_good_stops_the_send_and_a_rerun_recovers(own_postgres: _OwnPostgres, smtpd: SmtpServer,
                                                                   tmp_path: Path) -> None:
    import threading

    from campaign import connection
    from campaign.config import load_config
    from campaign.db import make_engine
    from campaign.delivery import sending
    run = _own_cli(own_postgres.url)
    _ready_on(run, tmp_path, SLOW.replace("rate_per_second = 40", "rate_per_second = 10"))
    # The database given up after 2 s. The rerun takes back what was in flight once its leases run out (their
    # worker, this process, is alive): short leases, renewed often, so that the test does not wait out a minute.
    timings = sending.Timings(reconnect_for=2.0, lease=dt.timedelta(seconds=10), heartbeat=1.0)
    config = load_config({"database_url": own_postgres.url, "smtp_url": smtpd.url,
                          "templates": str(ROOT / "templates"), "actor": "tester"})
    engine = make_engine(own_postgres.url)
    raised: list[BaseException] = []

    def send_now() -> None:
        try:
            sending.send_wave(engine, config, SLUG, "notice", sending.SendOptions(workers=1, timings=timings))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=send_now)
    thread.start()
    deadline = time.monotonic() + 60
    while len(smtpd.messages) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    own_postgres.pg_ctl("-m", "fast", "stop")
    thread.join(60)
    assert not thread.is_alive()  # it stopped instead of waiting forever
    assert len(raised) == 1 and isinstance(raised[0], connection.DatabaseLost), raised
    assert "send again" in str(raised[0]).lower() or "run it again" in str(raised[0]).lower()
    engine.dispose()
    own_postgres.start()
    result = run("send", SLUG, "--wave", "notice", "--workers", "1", env={"CAMPAIGN_SMTP_URL": smtpd.url})
    assert result.exit_code == 0, result.output
    st = json.loads(run("status", SLUG, "--json").stdout)
    assert st["waves"]["notice"]["sent"] == 40
    _delivered_once_but_in_flight(smtpd, 4)


def test_an_expired_wave_marks_its_waiting_deliveries_expired(run_cli: CliRun, smtpd: SmtpServer,
                                                              ready: Callable[..., None]) -> None:
    # A one-hour window: most recipients are outside it now, and their deliveries wait.
    ready(window='[send_window]\nstart = "03:00"\nend = "04:00"\n')
    send(run_cli, smtpd)
    waiting = notice(run_cli)["pending"]
    assert waiting > 0
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=11)).isoformat()  # past the cutoff (10 days away)
    dry = run_cli("send", SLUG, "--wave", "notice", "--dry-run", env={"CAMPAIGN_CLOCK": later})
    assert dry.exit_code == 1 and f"{waiting} pending deliveries would be marked expired" in dry.stderr
    assert notice(run_cli)["pending"] == waiting  # the dry run changed nothing
    result = run_cli("send", SLUG, "--wave", "notice", env={"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_CLOCK": later})
    assert result.exit_code == 1 and f"{waiting} pending deliveries marked expired" in result.stderr
    counts = notice(run_cli)
    assert counts["pending"] == 0 and counts["expired"] == waiting
    assert counts["sent"] + counts["expired"] == 40


def test_the_send_clocks_only_the_idle_time_spent_waiting_on_the_database() -> None:
    """`db time` (the database's hold on the send) is the time the worker's event loop sat idle while some task
    waited on the database; idle time with nothing waiting on it (a slow relay) does not count, nor does a
    task waiting on it while the loop is busy.

    Exact where it can be: nothing at all is counted idle with nothing waiting, or busy (the loop only polls);
    the idle wait counted is at most the time it took, and at least half of the 0.2 s slept — the loop begins
    to wait moments after the sleep does, and the half leaves a loaded machine 0.1 s for those moments."""
    import asyncio

    from campaign.delivery.waits import IdleClock, Waits

    waits = Waits()
    clock = IdleClock(waits)

    async def main() -> None:
        await asyncio.sleep(0.2)  # idle, nothing waits on the database: not counted
        assert clock.held == 0.0
        waits.on_db = 1
        started = time.perf_counter()
        await asyncio.sleep(0.2)  # idle while a task waits on the database: counted
        took = time.perf_counter() - started
        assert 0.1 <= clock.held <= took, (clock.held, took)
        before = clock.held
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:  # busy: the loop has work, waiting on the database costs nothing
            await asyncio.sleep(0)
        assert clock.held == before

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(clock)) as runner:
        runner.run(main())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the parent's polling: the same on PostgreSQL
@pytest.mark.parametrize("every, least, most", [(0.1, 4, 1_000_000), (3600.0, 1, 1)])  # 0.1: a second or more
def test_progress_is_counted_as_often_as_asked(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                               ready: Callable[..., None], db_url: str,
                                               every: float, least: int, most: int) -> None:
    """Each progress report is a count of the wave's deliveries (on a large wave, a scan of it): the workers'
    parent counts as often as its caller asks — the bar on a terminal twice a second, a plain line every ten
    seconds — and once at the end, not twice a second whoever reads it."""
    from campaign.config import load_config
    from campaign.delivery import sending
    ready(limits=SLOW)  # 40 messages at 40 a second, shared by the two workers: about a second
    config = load_config({"database_url": db_url, "smtp_url": smtpd.url, "templates": str(ROOT / "templates"),
                          "actor": "tester"})
    seen: list[dict[str, int]] = []
    summary = sending.send_wave(engine, config, SLUG, "notice", sending.SendOptions(ignore_window=True, workers=2),
                                progress=seen.append, progress_every=every)
    assert summary.counts["sent"] == 40
    assert least <= len(seen) <= most, len(seen)
    assert seen[-1]["sent"] == 40


def test_the_summary_splits_the_database_time_into_its_fixed_costs(engine: Engine, smtpd: SmtpServer,
                                                                    ready: Callable[..., None], db_url: str) -> None:
    """`send --verbose` says how much of the database's time went to preparing the wave (its ledger rows) and to
    finishing it (its counts, the wave done), the costs that grow with the audience, not with the messages
    (issue 26): each is measured, and they are parts of the whole."""
    from campaign.config import load_config
    from campaign.delivery import sending
    ready()
    config = load_config({"database_url": db_url, "smtp_url": smtpd.url, "templates": str(ROOT / "templates"),
                          "actor": "tester"})
    summary = sending.send_wave(engine, config, SLUG, "notice", sending.SendOptions(ignore_window=True, workers=1))
    assert summary.counts["sent"] == 40
    assert summary.prepare_seconds > 0 and summary.finish_seconds > 0
    assert summary.prepare_seconds + summary.finish_seconds <= summary.db_seconds <= summary.elapsed
    assert {"prepare_seconds", "finish_seconds"} <= summary.as_json().keys()
