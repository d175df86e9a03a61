"""No one flips alone (`[approval] required = true`), on SQLite and PostgreSQL: `schedule` and `flip` refuse until
someone other than the definition's author approves; the author's own approval is refused; a replacement voids
earlier approvals; approvals are audit events that `status`, `log` and the report show; the scheduler's flip
step waits (not done) while the approval is missing, and flips once it is given."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign.definition import parse_definition
from campaign.errors import InputError
from tests.conftest import ROOT, CliRun, table_counts
from tests.smtpd import SmtpServer

SLUG = "voice-local-processing"
CUTOFF = dt.datetime(2031, 3, 28, 7, 0, tzinfo=dt.UTC)
N = 8
ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            + "".join(f"a{i:03d},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(N)))
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           + "".join(f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(N)))
AUTHOR, REVIEWER = "tester", "rivka"  # run_cli acts as "tester" unless told otherwise


def at(delta: dt.timedelta) -> str:
    return (CUTOFF + delta).isoformat()


BEFORE = {"CAMPAIGN_CLOCK": at(-dt.timedelta(days=20))}


def as_(actor: str, **env: str) -> dict[str, str]:
    return {**BEFORE, "CAMPAIGN_ACTOR": actor, **env}


def definition_text(approval: str = "[approval]\nrequired = true\n", name: str | None = None) -> str:
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = text_.replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2031-03-28T00:00:00-07:00"')
    text_ = text_.replace("require_notice = true", "require_notice = false")
    text_ = "\n".join(line for line in text_.splitlines() if not line.startswith("min_notice")) + "\n"
    start, end = text_.index("[send_window]"), text_.index("[context]")
    text_ = text_[:start] + ("[limits]\nrate_per_second = 500\nconcurrency = 4\nmax_attempts = 3\n"
                             "retry_base_seconds = 0.01\nretry_max_seconds = 0.02\n\n") + text_[end:]
    if name is not None:
        text_ = text_.replace("name = \"Retire 'Do not send voice recordings'\"", f'name = "{name}"')
    return text_ + "\n" + approval


@pytest.fixture
def created(run_cli: CliRun, write_file: Callable[..., Path]) -> Path:
    """Accounts and devices imported, the campaign created by AUTHOR with `[approval] required = true`."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=BEFORE).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=BEFORE).exit_code == 0
    path = write_file("def.toml", definition_text())
    result = run_cli("create", str(path), env=as_(AUTHOR))
    assert result.exit_code == 0, result.output
    assert "approval: required, not given: `campaign approve` by someone other than tester" in result.stdout
    return path


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def status(run_cli: CliRun) -> dict[str, object]:
    result = run_cli("status", SLUG, "--json", env=BEFORE)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["approval"])


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_text(encoding="utf-8").encode("utf-8")).hexdigest()


# -- the definition ----------------------------------------------------------------------------------------

def test_the_definition_reads_approval_and_names_the_line_of_a_mistake() -> None:
    assert parse_definition(definition_text()).approval_required is True
    assert parse_definition(definition_text("")).approval_required is False
    assert parse_definition(definition_text("[approval]\nrequired = false\n")).approval_required is False
    for bad, message in (('[approval]\nrequired = "yes"\n', "approval.required: must be true or false"),
                         ("[approval]\nrequired = true\nby = 2\n", "approval.by: unknown key"),
                         ("[approval]\n", "approval: missing key 'required'")):
        with pytest.raises(InputError) as err:
            parse_definition(definition_text(bad), "def.toml")
        shown = str(err.value)
        line = definition_text(bad).splitlines().index("[approval]") + 1
        wanted = line + (1 if "required =" in bad and "unknown" not in message else 0) + (
            2 if "unknown" in message else 0)
        assert f"def.toml:{wanted}: {message}" in shown, shown


# -- refusals and approval ---------------------------------------------------------------------------------

def test_schedule_and_flip_refuse_until_someone_else_approves(run_cli: CliRun, engine: Engine, created: Path) -> None:
    refused = run_cli("schedule", SLUG, env=as_(AUTHOR))
    assert refused.exit_code == 1
    assert "needs an approval before its schedule" in refused.stderr
    assert "`campaign approve voice-local-processing` by someone other than tester" in refused.stderr
    flip = run_cli("flip", SLUG, "--before-cutoff", env=as_(AUTHOR))
    assert flip.exit_code == 1 and "needs an approval before its flip" in flip.stderr
    assert rows(engine, "SELECT state FROM campaign") == [("draft",)]
    assert rows(engine, "SELECT COUNT(*) FROM step") == [(0,)]
    assert rows(engine, "SELECT COUNT(*) FROM setting_change") == [(0,)]

    # The dry runs show what would happen, and say that the real run waits for the approval.
    before = table_counts(engine)
    dry = run_cli("schedule", SLUG, "--dry-run", env=as_(AUTHOR))
    assert dry.exit_code == 0, dry.output
    assert "approval: required, not given" in dry.stdout and "the real `schedule` refuses" in dry.stdout
    dry_flip = run_cli("flip", SLUG, "--before-cutoff", "--dry-run", "--json", env=as_(AUTHOR))
    assert dry_flip.exit_code == 0, dry_flip.output
    assert json.loads(dry_flip.stdout)["changed"] == N
    assert json.loads(dry_flip.stdout)["approval"].startswith("required, not given")
    assert table_counts(engine) == before

    # The author's own approval is refused, and records nothing.
    own = run_cli("approve", SLUG, env=as_(AUTHOR))
    assert own.exit_code == 1
    assert "tester created or last replaced the definition" in own.stderr and "someone else" in own.stderr
    assert rows(engine, "SELECT COUNT(*) FROM audit_event WHERE action LIKE '%approv%'") == [(0,)]

    # A dry run of someone else's approval writes nothing either.
    dry_ok = run_cli("approve", SLUG, "--dry-run", "--json", env=as_(REVIEWER))
    assert dry_ok.exit_code == 0, dry_ok.output
    assert json.loads(dry_ok.stdout)["action"] == "approved" and json.loads(dry_ok.stdout)["dry_run"] is True
    assert table_counts(engine) == before

    ok = run_cli("approve", SLUG, "--json", env=as_(REVIEWER))
    assert ok.exit_code == 0, ok.output
    got = json.loads(ok.stdout)
    assert got["action"] == "approved" and got["by"] == REVIEWER
    assert got["approval"]["approved"] is True and got["approval"]["digest"] == sha(created)
    again = run_cli("approve", SLUG, env=as_(REVIEWER))
    assert again.exit_code == 0 and "already approved by rivka" in again.stdout
    assert rows(engine, "SELECT actor FROM audit_event WHERE action = 'campaign.approve'") == [(REVIEWER,)]

    st = status(run_cli)
    assert st["required"] is True and st["approved"] is True and st["version"] == 1
    assert st["defined_by"] == AUTHOR and st["digest"] == sha(created)
    approvals = st["approvals"]
    assert isinstance(approvals, list) and [a["by"] for a in approvals] == [REVIEWER]
    assert approvals[0]["at"].startswith("2031-03-08") and approvals[0]["digest"] == sha(created)
    shown = run_cli("status", SLUG, env=BEFORE).stdout
    assert "approval       approved by rivka at 2031-03-08" in shown and "version 1" in shown

    scheduled = run_cli("schedule", SLUG, env=as_(AUTHOR))
    assert scheduled.exit_code == 0, scheduled.output
    assert "approval: approved by rivka" in scheduled.stdout
    flipped = run_cli("flip", SLUG, "--before-cutoff", "--json", env=as_(AUTHOR))
    assert flipped.exit_code == 0, flipped.output
    assert json.loads(flipped.stdout)["changed"] == N

    log = json.loads(run_cli("log", SLUG, "--json", env=BEFORE).stdout)["events"]
    approve = [e for e in log if e["action"] == "campaign.approve"]
    assert len(approve) == 1 and approve[0]["actor"] == REVIEWER
    assert approve[0]["detail"] == {"defined_by": AUTHOR, "digest": sha(created), "required": True, "version": 1}
    schedule = next(e for e in log if e["action"] == "campaign.schedule")
    assert schedule["detail"]["approved_by"] == [REVIEWER] and schedule["detail"]["digest"] == sha(created)
    assert "campaign.approve" in run_cli("log", SLUG, env=BEFORE).stdout


def test_replacing_the_definition_voids_earlier_approvals(run_cli: CliRun, engine: Engine, created: Path,
                                                          write_file: Callable[..., Path]) -> None:
    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    assert status(run_cli)["approved"] is True
    # The same text again is still a replacement: what was approved before does not carry over.
    replaced = run_cli("create", str(created), "--replace", env=as_(AUTHOR))
    assert replaced.exit_code == 0, replaced.output
    assert "1 earlier approval(s) voided by a replacement" in replaced.stdout
    st = status(run_cli)
    assert st["approved"] is False and st["version"] == 2 and st["approvals"] == []
    voided = st["voided"]
    assert isinstance(voided, list) and [(a["by"], a["version"]) for a in voided] == [(REVIEWER, 1)]
    refused = run_cli("schedule", SLUG, env=as_(AUTHOR))
    assert refused.exit_code == 1 and "voided when the definition was replaced" in refused.stderr

    # Now the reviewer replaces it with a text of their own: they become its author, and cannot approve it; the
    # first author can.
    other = write_file("def2.toml", definition_text(name="Retire it, reviewed"))
    assert run_cli("create", str(other), "--replace", env=as_(REVIEWER)).exit_code == 0
    own = run_cli("approve", SLUG, env=as_(REVIEWER))
    assert own.exit_code == 1 and "rivka created or last replaced" in own.stderr
    assert run_cli("approve", SLUG, env=as_(AUTHOR)).exit_code == 0
    st = status(run_cli)
    assert st["approved"] is True and st["version"] == 3 and st["defined_by"] == REVIEWER
    assert st["digest"] == sha(other) and [a["by"] for a in st["approvals"]] == [AUTHOR]  # type: ignore[union-attr]
    assert run_cli("schedule", SLUG, env=as_(REVIEWER)).exit_code == 0


def test_a_withdrawn_approval_stops_the_flip_and_shows_in_the_report(run_cli: CliRun, engine: Engine,
                                                                     created: Path, tmp_path: Path) -> None:
    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    assert run_cli("schedule", SLUG, env=as_(AUTHOR)).exit_code == 0
    nothing = run_cli("approve", SLUG, "--revoke", env=as_("someone"))
    assert nothing.exit_code == 0 and "someone has no approval to withdraw" in nothing.stdout
    before = table_counts(engine)
    assert run_cli("approve", SLUG, "--revoke", "--dry-run", env=as_(REVIEWER)).exit_code == 0
    assert table_counts(engine) == before
    revoked = run_cli("approve", SLUG, "--revoke", env=as_(REVIEWER))
    assert revoked.exit_code == 0 and "approval of rivka withdrawn" in revoked.stdout
    assert status(run_cli)["approved"] is False
    flip = run_cli("flip", SLUG, "--before-cutoff", env=as_(AUTHOR))
    assert flip.exit_code == 1 and "needs an approval" in flip.stderr

    out = tmp_path / "report.html"
    assert run_cli("report", SLUG, "--format", "html", "--out", str(out), env=BEFORE).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "approval required, not given" in page and "Approval withdrawn" in page and "Approved" in page
    story = json.loads(run_cli("report", SLUG, "--account", "a001", "--json", env=BEFORE).stdout)
    assert [e["actor"] for e in story["events"] if e["action"].endswith("approve")] == [REVIEWER]

    assert run_cli("approve", SLUG, env=as_("third")).exit_code == 0
    assert run_cli("report", SLUG, "--format", "html", "--out", str(out), env=BEFORE).exit_code == 0
    assert "approved by third" in out.read_text(encoding="utf-8")
    assert run_cli("flip", SLUG, "--before-cutoff", env=as_(AUTHOR)).exit_code == 0
    assert rows(engine, "SELECT COUNT(*) FROM setting_change WHERE state = 'changed'") == [(N,)]


def test_a_campaign_without_approval_goes_as_before(run_cli: CliRun, engine: Engine,
                                                    write_file: Callable[..., Path]) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=BEFORE).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=BEFORE).exit_code == 0
    result = run_cli("create", str(write_file("def.toml", definition_text(""))), env=as_(AUTHOR))
    assert result.exit_code == 0 and "approval" not in result.stdout
    assert status(run_cli)["required"] is False
    assert run_cli("schedule", SLUG, env=as_(AUTHOR)).exit_code == 0
    assert "approval" not in run_cli("status", SLUG, env=BEFORE).stdout


# -- the scheduler's flip step -----------------------------------------------------------------------------

def scheduler_once(db_url: str, smtpd: SmtpServer, cwd: Path, clock: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SMTP_URL": smtpd.url,
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_CLOCK": clock, "CAMPAIGN_ACTOR": "ops"}
    return subprocess.run([sys.executable, "-m", "campaign", "scheduler", "run", "--once"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_the_schedulers_flip_step_waits_for_the_approval(run_cli: CliRun, engine: Engine, created: Path,
                                                         db_url: str, smtpd: SmtpServer, workdir: Path) -> None:
    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    assert run_cli("schedule", SLUG, env=as_(AUTHOR)).exit_code == 0
    assert run_cli("approve", SLUG, "--revoke", env=as_(REVIEWER)).exit_code == 0

    # Just after the cutoff: the flip step is refused for the missing approval; it is not done, but waits
    # (pending, tried again a minute later), and nothing is switched.
    first = scheduler_once(db_url, smtpd, workdir, at(dt.timedelta(minutes=1)))
    assert first.returncode == 0, first.stderr
    assert "flip retried later: campaign 'voice-local-processing' needs an approval before its flip" in first.stderr
    ((state, due),) = rows(engine, "SELECT state, due_at FROM step WHERE name = 'flip'")
    assert state == "pending"
    due_at = due if isinstance(due, dt.datetime) else dt.datetime.fromisoformat(str(due))
    due_at = due_at if due_at.tzinfo else due_at.replace(tzinfo=dt.UTC)
    assert CUTOFF + dt.timedelta(minutes=1) < due_at <= CUTOFF + dt.timedelta(minutes=3)
    assert rows(engine, "SELECT COUNT(*) FROM setting_change") == [(0,)]
    assert rows(engine, "SELECT COUNT(*) FROM audit_event WHERE action = 'flip'") == [(0,)]
    st = json.loads(run_cli("status", SLUG, "--json", env={"CAMPAIGN_CLOCK": at(dt.timedelta(minutes=2))}).stdout)
    assert st["next_step"]["step"] == "flip" and st["approval"]["approved"] is False

    # Approved again: the next run flips, once.
    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    second = scheduler_once(db_url, smtpd, workdir, at(dt.timedelta(minutes=10)))
    assert second.returncode == 0, second.stderr
    assert rows(engine, "SELECT state FROM step WHERE name = 'flip'") == [("done",)]
    assert rows(engine, "SELECT COUNT(*) FROM setting_change WHERE state = 'changed'") == [(N,)]
    assert rows(engine, "SELECT actor FROM audit_event WHERE action = 'flip'") == [("scheduler",)]


# -- who acts (issue 21: an actor is a printable name; the rule stays; send waits too) ---------------------

@pytest.mark.parametrize("actor", ["", " ", "\t", "rivka\nforged line", "ri\x1bvka", "ri\x00vka", "ri\u2028vka",
                                   "r" * 129])
def test_an_actor_that_is_no_printable_name_is_refused(run_cli: CliRun, engine: Engine, created: Path,
                                                       actor: str) -> None:
    before = table_counts(engine)
    by_option = run_cli("--actor", actor, "approve", SLUG, env=BEFORE)
    assert by_option.exit_code == 2, by_option.output
    assert "actor" in by_option.stderr and "Traceback" not in by_option.output
    if actor and "\x00" not in actor:  # an empty variable is an unset one; NUL cannot be in one
        by_env = run_cli("approve", SLUG, env=as_(actor))
        assert by_env.exit_code == 2, by_env.output
        assert "actor" in by_env.stderr
    assert table_counts(engine) == before
    assert status(run_cli)["approved"] is False


def test_white_space_around_a_name_makes_no_second_person(run_cli: CliRun, engine: Engine, created: Path) -> None:
    own = run_cli("--actor", f" {AUTHOR} ", "approve", SLUG, env=BEFORE)
    assert own.exit_code == 1 and f"{AUTHOR} created or last replaced the definition" in own.stderr
    assert status(run_cli)["approved"] is False


def test_each_event_records_the_login_and_host_beside_a_declared_actor(run_cli: CliRun, engine: Engine,
                                                                      created: Path) -> None:
    import getpass
    import socket
    login, host = getpass.getuser(), socket.gethostname()
    assert login not in (REVIEWER, AUTHOR)
    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    assert rows(engine, "SELECT actor, login, host FROM audit_event WHERE action = 'campaign.approve'") == [
        (REVIEWER, login, host)]
    # Acting under one's own login name: nothing to add.
    assert run_cli("pause", SLUG, env=as_(login)).exit_code == 0
    assert rows(engine, "SELECT actor, login, host FROM audit_event WHERE action = 'campaign.pause'") == [
        (login, None, None)]
    events = json.loads(run_cli("log", SLUG, "--json", env=BEFORE).stdout)["events"]
    approve = next(e for e in events if e["action"] == "campaign.approve")
    assert (approve["actor"], approve["login"], approve["host"]) == (REVIEWER, login, host)
    line = next(x for x in run_cli("log", SLUG, env=BEFORE).stdout.splitlines() if "campaign.approve" in x)
    assert line.split()[1] == REVIEWER and line.endswith(f"  ({login}@{host})")


def test_the_log_escapes_control_characters_in_every_field(run_cli: CliRun, engine: Engine, created: Path,
                                                           write_file: Callable[..., Path]) -> None:
    # A file name is the one text of an event that no import rule checks: it may hold a line break.
    forged = "x\n2031-03-08T00:00:00+00:00  admin      campaign.approve \x1b[2K"
    path = write_file(f"{forged}.csv", ACCOUNTS)
    assert run_cli("import", "accounts", str(path), env=BEFORE).exit_code == 0
    shown = run_cli("log", SLUG, env=BEFORE).stdout
    lines = shown.splitlines()
    assert not any(line.startswith("2031-03-08T00:00:00+00:00  admin") for line in lines), shown
    assert "\x1b" not in shown
    assert "x\\n2031-03-08T00:00:00+00:00  admin" in shown and "\\x1b[2K" in shown
    # The JSON keeps the value as it is (its encoding escapes it).
    events = json.loads(run_cli("log", SLUG, "--json", env=BEFORE).stdout)["events"]
    assert any(e["detail"].get("file") == str(path) for e in events)


def test_approval_once_required_stays_required_and_send_waits_for_it(run_cli: CliRun, engine: Engine,
                                                                    created: Path,
                                                                    write_file: Callable[..., Path]) -> None:
    # The author replaces the definition with one that drops the rule: it stays required.
    dropped = write_file("def-no-approval.toml", definition_text("[approval]\nrequired = false\n"))
    replaced = run_cli("create", str(dropped), "--replace", env=as_(AUTHOR))
    assert replaced.exit_code == 0, replaced.output
    st = status(run_cli)
    assert st["required"] is True and st["required_by_earlier_version"] is True and st["approved"] is False
    assert "an earlier version required it" in run_cli("status", SLUG, env=BEFORE).stdout
    assert run_cli("schedule", SLUG, env=as_(AUTHOR)).exit_code == 1

    # A real send refuses and writes nothing; its dry run shows what it would do; a test send is not a send.
    before = table_counts(engine)
    send = run_cli("send", SLUG, "--wave", "notice", env=as_(AUTHOR))
    assert send.exit_code == 1, send.output
    assert "needs an approval before its send" in send.stderr
    assert table_counts(engine) == before
    dry = run_cli("send", SLUG, "--wave", "notice", "--dry-run", "--json", env=as_(AUTHOR))
    assert dry.exit_code == 0, dry.output
    assert table_counts(engine) == before
    test_send = run_cli("test-send", SLUG, "--to", "qa@example.com", "--wave", "notice", env=as_(AUTHOR))
    assert test_send.exit_code == 0, test_send.output

    assert run_cli("approve", SLUG, env=as_(REVIEWER)).exit_code == 0
    sent = run_cli("send", SLUG, "--wave", "notice", "--ignore-window", "--json", env=as_(AUTHOR))
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.stdout)["counts"]["sent"] == N
