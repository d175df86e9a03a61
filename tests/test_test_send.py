"""`campaign test-send`: one message per wave × locale to internal addresses, over real SMTP, marked as a
test; the ledger untouched."""

from __future__ import annotations

import email
import json
from email.policy import default

from sqlalchemy import Engine, text

from tests.conftest import ROOT, CliRun
from tests.smtpd import NO_SUCH_USER, SmtpServer, smtpd  # noqa: F401

EXAMPLE = ROOT / "data" / "voice-local-processing.toml"


def setup(run_cli: CliRun) -> None:
    assert run_cli("import", "accounts", str(ROOT / "data" / "accounts.csv")).exit_code == 0
    assert run_cli("import", "devices", str(ROOT / "data" / "devices.csv")).exit_code == 0
    assert run_cli("create", str(EXAMPLE)).exit_code == 0


def test_test_send_over_smtp(run_cli: CliRun, engine: Engine, smtpd: SmtpServer) -> None:  # noqa: F811
    setup(run_cli)
    locales = json.loads(run_cli("audience", "voice-local-processing", "--by", "locale", "--json").stdout)["by"]
    result = run_cli("test-send", "voice-local-processing", "--to", "qa@example.com,Lead@Example.COM",
                     "--wave", "notice", env={"CAMPAIGN_SMTP_URL": smtpd.url})
    assert result.exit_code == 0, result.output
    got = smtpd.messages
    assert len(got) == 2 * len(locales)
    assert sorted({tuple(m.recipients) for m in got}) == [("Lead@example.com",), ("qa@example.com",)]
    seen_locales = set()
    for m in got:
        msg = email.message_from_bytes(m.data, policy=default)
        assert str(msg["Subject"]).startswith("[TEST] ")
        assert msg["X-Campaign-Test"] == "yes" and msg["Auto-Submitted"] == "auto-generated"
        assert msg["X-Campaign-Wave"] == "notice"
        assert m.sender == "privacy@example.com"
        seen_locales.add(msg.get_body(("html",)).get_content().split('lang="')[1].split('"')[0])
    assert {"en-US", "es-US", "de-DE", "ja-JP", "de"} <= seen_locales
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM delivery")).scalar_one() == 0
        event = conn.execute(text("SELECT actor, detail FROM audit_event WHERE action = 'campaign.test_send'")).one()
    assert event.actor == "tester" and json.loads(event.detail)["sent"] == 2 * len(locales)


def test_test_send_reports_a_refusal(run_cli: CliRun, smtpd: SmtpServer) -> None:  # noqa: F811
    setup(run_cli)
    smtpd.script("nobody@example.com", [NO_SUCH_USER] * 100)
    result = run_cli("test-send", "voice-local-processing", "--to", "nobody@example.com", "--wave", "reminder",
                     env={"CAMPAIGN_SMTP_URL": smtpd.url})
    assert result.exit_code == 1
    assert "permanent" in result.stdout and "550" in result.stdout
    assert "were not accepted" in result.stderr


def test_test_send_dry_run_sends_nothing(run_cli: CliRun, smtpd: SmtpServer) -> None:  # noqa: F811
    setup(run_cli)
    result = run_cli("test-send", "voice-local-processing", "--to", "qa@example.com", "--dry-run",
                     env={"CAMPAIGN_SMTP_URL": smtpd.url})
    assert result.exit_code == 0 and "would send" in result.stdout
    assert smtpd.messages == []


def test_test_send_bad_address(run_cli: CliRun) -> None:
    setup(run_cli)
    result = run_cli("test-send", "voice-local-processing", "--to", "not an address")
    assert result.exit_code == 2 and "--to:" in result.stderr


def test_test_send_to_maildir(run_cli: CliRun, workdir: object) -> None:
    setup(run_cli)
    result = run_cli("test-send", "voice-local-processing", "--to", "qa@example.com", "--wave", "confirmation",
                     env={"CAMPAIGN_SMTP_URL": "maildir:./outbox"})
    assert result.exit_code == 0, result.output
    from pathlib import Path
    files = list(Path("outbox/new").iterdir())
    assert files and not list(Path("outbox/tmp").iterdir())
