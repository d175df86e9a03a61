"""`schedule` and `scheduler run`: each step once, on time, even after downtime and with two schedulers (G8),
on SQLite and PostgreSQL, against a real SMTP server; time is simulated with CAMPAIGN_CLOCK."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign.cutoff import scheduling
from tests.conftest import ROOT, CliRun, table_counts
from tests.smtpd import SmtpServer
from tests.waiting import LogFile, wait_until

SLUG = "voice-local-processing"
CUTOFF = dt.datetime(2031, 3, 28, 7, 0, tzinfo=dt.UTC)
N = 12
LEASE = 15  # seconds: the schedulers' lease in the takeover test (`scheduler run --lease`; 45 in production)
ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            + "".join(f"a{i:03d},user{i}@example.com,User {i},{loc},{tz},{c}\n" for i, (loc, tz, c) in enumerate(
                [("en-US", "America/New_York", "US"), ("de-DE", "Europe/Berlin", "DE"),
                 ("ja-JP", "Asia/Tokyo", "JP"), ("es-US", "America/Los_Angeles", "US")] * (N // 4))))
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           + "".join(f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(N)))


def at(delta: dt.timedelta) -> str:
    return (CUTOFF + delta).isoformat()


def definition(tmp: Path) -> Path:
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = text_.replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2031-03-28T00:00:00-07:00"')
    start, end = text_.index("[send_window]"), text_.index("[context]")
    text_ = text_[:start] + ("[limits]\nrate_per_second = 500\nconcurrency = 4\nmax_attempts = 3\n"
                             "retry_base_seconds = 0.01\nretry_max_seconds = 0.02\n\n") + text_[end:]
    path = tmp / "def.toml"
    path.write_text(text_, encoding="utf-8")
    return path


@pytest.fixture
def scheduled(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> None:
    """12 accounts with one affected device each, the campaign created and scheduled 20 days before the cutoff."""
    clock = {"CAMPAIGN_CLOCK": at(-dt.timedelta(days=20))}
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=clock).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=clock).exit_code == 0
    result = run_cli("create", str(definition(tmp_path)), env=clock)
    assert result.exit_code == 0, result.output
    result = run_cli("schedule", SLUG, env=clock)
    assert result.exit_code == 0, result.output


class Done:
    """A finished scheduler process: its exit code and what it printed."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float = 240) -> None:
        self.stdout, self.stderr = proc.communicate(timeout=timeout)
        self.returncode = proc.returncode


def run_once(db_url: str, smtpd: SmtpServer, cwd: Path, clock: str, *args: str) -> Done:
    return Done(scheduler(db_url, smtpd, cwd, clock, "--once", *args))


def scheduler(db_url: str, smtpd: SmtpServer, cwd: Path, clock: str, *args: str,
              log: LogFile | None = None) -> subprocess.Popen[str]:
    """`campaign scheduler run ARGS…`; its stderr (its log) to `log`, read while it runs, if given."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SMTP_URL": smtpd.url,
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_CLOCK": clock, "CAMPAIGN_ACTOR": "ops"}
    command = [sys.executable, "-m", "campaign", "scheduler", "run", *args]
    if log is None:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with log.path.open("w", encoding="utf-8") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)


def received(smtpd: SmtpServer) -> Counter[tuple[str, str]]:
    """(wave, recipient) → how many messages the server took."""
    return Counter((email.message_from_bytes(m.data)["X-Campaign-Wave"], m.recipients[0]) for m in smtpd.messages)


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def steps(engine: Engine) -> dict[str, str]:
    return {str(n): str(s) for n, s in rows(engine, "SELECT name, state FROM step")}


# -- schedule ---------------------------------------------------------------------------------------------

def test_schedule_registers_each_wave_and_the_flip(run_cli: CliRun, engine: Engine, scheduled: None) -> None:
    got = {str(n): (str(s), d) for n, s, d in rows(engine, "SELECT name, state, due_at FROM step")}
    assert set(got) == {"wave:notice", "wave:reminder", "wave:confirmation", "flip"}
    assert all(state == "pending" for state, _ in got.values())
    assert rows(engine, "SELECT state FROM campaign") == [("scheduled",)]
    status = json.loads(run_cli("status", SLUG, "--json", env={"CAMPAIGN_CLOCK": at(-dt.timedelta(days=20))}).stdout)
    assert status["next_step"]["step"] == "wave:notice"
    assert status["next_step"]["due_at"].startswith("2031-03-14T07:00:00")
    again = run_cli("schedule", SLUG, env={"CAMPAIGN_CLOCK": at(-dt.timedelta(days=19))})
    assert again.exit_code == 1 and "scheduled already" in again.stderr
    events = rows(engine, "SELECT actor, action FROM audit_event WHERE action = 'campaign.schedule'")
    assert events == [("tester", "campaign.schedule")]


def test_schedule_refuses_a_past_cutoff(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                        tmp_path: Path) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path))).exit_code == 0
    result = run_cli("schedule", SLUG, env={"CAMPAIGN_CLOCK": at(dt.timedelta(minutes=1))})
    assert result.exit_code == 2 and "has passed" in result.stderr
    assert rows(engine, "SELECT COUNT(*) FROM step") == [(0,)]
    assert rows(engine, "SELECT state FROM campaign") == [("draft",)]


def test_schedule_dry_run_prints_the_timeline_and_writes_nothing(run_cli: CliRun, engine: Engine, db_url: str,
                                                               write_file: Callable[..., Path], tmp_path: Path) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path))).exit_code == 0
    before = table_counts(engine)
    digest = hashlib.sha256(Path(db_url.removeprefix("sqlite:///")).read_bytes()).hexdigest() \
        if db_url.startswith("sqlite") else None
    result = run_cli("schedule", SLUG, "--dry-run", "--json", env={"CAMPAIGN_CLOCK": at(-dt.timedelta(days=20))})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dry_run"] is True and out["rendered"] == 3 * N
    by_step = {i["step"]: i for i in out["timeline"]}
    assert [i["step"] for i in out["timeline"]] == ["wave:notice", "wave:reminder", "flip", "wave:confirmation"]
    assert by_step["wave:notice"]["at"] == "2031-03-14T07:00:00+00:00"
    assert by_step["wave:notice"]["at_cutoff_offset"] == "2031-03-14T00:00:00-07:00"  # the definition's own offset
    assert by_step["wave:notice"]["recipients_now"] == N
    assert by_step["flip"]["devices_now"] == N
    text_out = run_cli("schedule", SLUG, "--dry-run", env={"CAMPAIGN_CLOCK": at(-dt.timedelta(days=20))})
    assert "2031-03-14T00:00:00-07:00" in text_out.stdout and "dry run" in text_out.stdout
    assert table_counts(engine) == before
    if digest is not None:
        assert hashlib.sha256(Path(db_url.removeprefix("sqlite:///")).read_bytes()).hexdigest() == digest


# -- scheduler run -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_down_at_the_cutoff_flips_once_on_start_and_sends_nothing_late(
        engine: Engine, db_url: str, smtpd: SmtpServer, workdir: Path, scheduled: None) -> None:
    # The notice comes due: the scheduler sends it.
    proc = run_once(db_url, smtpd, workdir, at(-dt.timedelta(days=13)))
    assert proc.returncode == 0, proc.stderr
    assert "wave:notice" in proc.stdout and "wave:notice due" in proc.stderr
    assert received(smtpd) == Counter({("notice", f"user{i}@example.com"): 1 for i in range(N)})
    # Down from before the reminder until after the cutoff: on start it flips once; the reminder (an
    # `affected` wave, expired at the cutoff) is never sent.
    proc = run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=1)))
    assert proc.returncode == 0, proc.stderr
    assert steps(engine) == {"wave:notice": "done", "wave:reminder": "expired", "flip": "done",
                             "wave:confirmation": "pending"}
    assert not [k for k in received(smtpd) if k[0] == "reminder"]
    assert rows(engine, "SELECT COUNT(*), COUNT(DISTINCT device_id) FROM setting_change WHERE state = 'changed'") \
        == [(N, N)]
    assert rows(engine, "SELECT DISTINCT value FROM device_setting") == [("dont_save",)]
    # Started again, nothing more happens; two hours after the cutoff the confirmation goes out, once.
    proc = run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=1, minutes=5)))
    assert proc.returncode == 0 and "did 0 step(s)" in proc.stdout, proc.stderr
    proc = run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=3)))
    assert proc.returncode == 0, proc.stderr
    got = received(smtpd)
    assert {k: v for k, v in got.items() if k[0] == "confirmation"} == \
        {("confirmation", f"user{i}@example.com"): 1 for i in range(N)}
    assert max(got.values()) == 1
    assert rows(engine, "SELECT COUNT(*) FROM setting_change") == [(N,)]
    assert set(steps(engine).values()) <= {"done", "expired"}


@pytest.mark.slow
def test_two_schedulers_do_each_step_once(engine: Engine, db_url: str, smtpd: SmtpServer, workdir: Path,
                                          scheduled: None) -> None:
    clock = at(-dt.timedelta(days=13))
    procs = [scheduler(db_url, smtpd, workdir, clock, "--once") for _ in range(2)]
    done = [Done(p) for p in procs]
    # One led and sent; the other found the lead taken (exit 1, said so) or, starting later, nothing left to do.
    outcomes = sorted((d.returncode, d.stdout, d.stderr) for d in done)
    assert outcomes[0][0] == 0, outcomes
    assert (outcomes[1][0] == 0 and "did 0 step(s)" in outcomes[1][1]) or \
        (outcomes[1][0] == 1 and "another scheduler leads" in outcomes[1][2]), outcomes
    assert received(smtpd) == Counter({("notice", f"user{i}@example.com"): 1 for i in range(N)})
    assert steps(engine)["wave:notice"] == "done"


@pytest.mark.slow
def test_a_waiting_scheduler_takes_over_when_the_leader_dies(engine: Engine, db_url: str, smtpd: SmtpServer,
                                                             workdir: Path, scheduled: None, tmp_path: Path) -> None:
    """A standby does not take the lead while the leader lives: it has looked twice (its log says so; each look
    is a try for the lead, a second a look apart) and the lease is still the leader's. The leader killed (-9),
    the standby leads once the lease has run out (G8: within a minute, the production lease being 45 s). Both
    run with a lease of LEASE s (`--lease`), so the test waits that out, not 45 s; the bound leaves the same 15 s
    over the lease for a loaded machine."""
    start = -dt.timedelta(days=15)  # nothing due yet
    started = time.monotonic()
    leader = scheduler(db_url, smtpd, workdir, at(start), "--poll", "1", "--lease", str(LEASE))

    def holder_now() -> str | None:
        held = rows(engine, "SELECT holder FROM lease WHERE name = 'scheduler'")
        return str(held[0][0]) if held else None

    holder = wait_until(holder_now, 60, 0.2, what="a leader")
    log = LogFile(tmp_path / "standby.log")
    # The standby's simulated clock goes on from where the leader's is now, as two machines' clocks agree: else it
    # would lag by the leader's head start and see the lease run out that much later.
    clock = at(start + dt.timedelta(seconds=time.monotonic() - started))
    standby = scheduler(db_url, smtpd, workdir, clock, "--poll", "1", "--lease", str(LEASE), log=log)
    log.wait_for("another scheduler leads", times=2)  # a look, a wait, a look again: the leader's lease held
    assert standby.poll() is None and rows(engine, "SELECT holder FROM lease") == [(holder,)], log.text()
    os.kill(leader.pid, signal.SIGKILL)
    leader.communicate(timeout=10)
    killed = time.monotonic()
    wait_until(lambda: holder_now() not in (None, holder), LEASE + 30, 0.5, what="the standby to lead")
    took = time.monotonic() - killed
    standby.send_signal(signal.SIGTERM)
    standby.communicate(timeout=30)
    assert standby.returncode == 0, log.text()
    assert " leads\n" in log.text() and took < LEASE + 15, (took, log.text())
    # SIGTERM let it go cleanly: the lease is given up.
    assert rows(engine, "SELECT COUNT(*) FROM lease") == [(0,)]
    assert scheduling.TIMINGS.lease + 15 <= 60  # the production lease keeps G8's minute with the same 15 s over


def test_scheduler_once_with_nothing_due(db_url: str, smtpd: SmtpServer, workdir: Path, scheduled: None,
                                         engine: Engine) -> None:
    """Started before anything is due, the scheduler leads, finds nothing to do and does nothing. Nothing done
    proves little alone (a scheduler that never looked at its steps would pass): the same start once the notice
    is due does that step, and only it."""
    proc = run_once(db_url, smtpd, workdir, at(-dt.timedelta(days=19)))
    assert proc.returncode == 0, proc.stderr
    assert "did 0 step(s)" in proc.stdout and " leads\n" in proc.stderr, proc.stderr
    assert not smtpd.messages
    assert set(steps(engine).values()) == {"pending"}
    assert rows(engine, "SELECT COUNT(*) FROM delivery") == [(0,)]
    assert rows(engine, "SELECT COUNT(*) FROM audit_event WHERE actor = 'scheduler'") == [(0,)]
    assert rows(engine, "SELECT COUNT(*) FROM lease") == [(0,)]  # it led, and gave the lead up at the end
    # Six days later the notice is due (the reminder, the flip and the confirmation are not).
    proc = run_once(db_url, smtpd, workdir, at(-dt.timedelta(days=13)))
    assert proc.returncode == 0, proc.stderr
    assert steps(engine) == {"wave:notice": "done", "wave:reminder": "pending", "flip": "pending",
                             "wave:confirmation": "pending"}
    assert received(smtpd) == Counter({("notice", f"user{i}@example.com"): 1 for i in range(N)})
    assert rows(engine, "SELECT state, COUNT(*) FROM delivery GROUP BY state") == [("sent", N)]
    assert [a for (a,) in rows(engine, "SELECT action FROM audit_event WHERE actor = 'scheduler' ORDER BY id")] \
        == ["wave.send", "wave.sent"]


@pytest.mark.slow
def test_sigterm_mid_wave_hands_the_step_back_and_a_restart_finishes(
        engine: Engine, db_url: str, smtpd: SmtpServer, workdir: Path, run_cli: CliRun, scheduled: None) -> None:
    # A slow relay budget: 12 messages at 3 a second leave time to stop the scheduler in the middle.
    with engine.begin() as conn:
        conn.execute(text("UPDATE campaign SET definition = REPLACE(definition, 'rate_per_second = 500', "
                          "'rate_per_second = 3')"))
    clock = at(-dt.timedelta(days=13))
    proc = scheduler(db_url, smtpd, workdir, clock, "--poll", "1")
    deadline = time.monotonic() + 120
    while len(smtpd.messages) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert smtpd.messages, "the scheduler sent nothing"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(smtpd.messages) < N  # stopped in the middle
    assert steps(engine)["wave:notice"] == "pending"  # handed back, not lost, not marked done
    assert rows(engine, "SELECT COUNT(*) FROM lease") == [(0,)]
    again = run_once(db_url, smtpd, workdir, at(-dt.timedelta(days=13, hours=-1)))
    assert again.returncode == 0, again.stderr
    assert steps(engine)["wave:notice"] == "done"
    got = received(smtpd)
    assert set(got) == {("notice", f"user{i}@example.com") for i in range(N)}
    assert sum(got.values()) - N <= 4  # at most the messages in flight (concurrency 4) went twice (G2)
    assert rows(engine, "SELECT COUNT(*) FROM delivery WHERE state = 'sent'") == [(N,)]


def test_a_rollback_cancels_the_scheduled_flip(run_cli: CliRun, engine: Engine, db_url: str, smtpd: SmtpServer,
                                               workdir: Path, scheduled: None) -> None:
    clock = {"CAMPAIGN_CLOCK": at(-dt.timedelta(days=1))}
    flipped = run_cli("flip", SLUG, "--before-cutoff", "--include-unnotified", env=clock)
    assert flipped.exit_code == 0, flipped.output
    undone = run_cli("rollback", SLUG, env=clock)
    assert undone.exit_code == 0, undone.output
    assert steps(engine)["flip"] == "cancelled"
    proc = run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=1)))
    assert proc.returncode == 0, proc.stderr
    assert "flip" not in proc.stdout  # nothing to retry: the flip is cancelled, not failed
    assert steps(engine)["flip"] == "cancelled"
    assert rows(engine, "SELECT DISTINCT value FROM device_setting") == [("do_not_send",)]


@pytest.mark.slow
def test_fair_notice_the_scheduler_switches_a_late_told_device_later_and_confirms_it(
        run_cli: CliRun, engine: Engine, db_url: str, smtpd: SmtpServer, workdir: Path, scheduled: None,
        write_file: Callable[..., Path]) -> None:
    with engine.begin() as conn:  # the campaign asks for seven days of notice
        conn.execute(text("UPDATE campaign SET definition = REPLACE(definition, 'require_notice = true', "
                          "'require_notice = true\nmin_notice = \"7d\"') WHERE definition NOT LIKE '%min_notice%'"))
    assert run_once(db_url, smtpd, workdir, at(-dt.timedelta(days=13))).returncode == 0
    late = {"CAMPAIGN_CLOCK": at(-dt.timedelta(days=3)), "CAMPAIGN_SMTP_URL": smtpd.url}
    account = write_file("late-a.csv", "account_id,email,name,locale,timezone,country\n"
                                       "late,late@example.com,Late,en-US,America/New_York,US\n")
    device = write_file("late-d.csv", "device_id,account_id,name,model,voice_recordings\n"
                                      "late-1,late,Office,Echo Show 10,do_not_send\n")
    assert run_cli("import", "accounts", str(account), env=late).exit_code == 0
    assert run_cli("import", "devices", str(device), env=late).exit_code == 0
    told = run_cli("send", SLUG, "--wave", "notice", "--workers", "1", env=late)
    assert told.exit_code == 0, told.output
    # At the cutoff everyone else is switched; the late-told device waits until its notice + 7 days.
    assert run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=1))).returncode == 0
    assert rows(engine, "SELECT state FROM setting_change WHERE device_id = 'late-1'") == [("waiting",)]
    assert rows(engine, "SELECT value FROM device_setting WHERE device_id = 'late-1'") == [("do_not_send",)]
    assert run_once(db_url, smtpd, workdir, at(dt.timedelta(hours=3))).returncode == 0  # the confirmation
    assert received(smtpd)[("confirmation", "late@example.com")] == 0
    # Before the seven days are up nothing happens to it; after, the scheduler switches it and confirms.
    early = run_once(db_url, smtpd, workdir, at(dt.timedelta(days=3, hours=23)))
    assert early.returncode == 0 and "fair notice" not in early.stdout, early.stdout
    assert rows(engine, "SELECT state FROM setting_change WHERE device_id = 'late-1'") == [("waiting",)]
    done = run_once(db_url, smtpd, workdir, at(dt.timedelta(days=4, hours=1)))
    assert done.returncode == 0 and "flip (fair notice ran)" in done.stdout, done.stdout
    ((state, flipped_at, notice_at),) = rows(
        engine, "SELECT c.state, c.flipped_at, d.sent_at FROM setting_change c JOIN delivery d ON "
                "d.account_id = c.account_id JOIN wave w ON w.id = d.wave_id WHERE c.device_id = 'late-1' "
                "AND w.name = 'notice'")
    assert state == "changed"
    as_time = [t if isinstance(t, dt.datetime) else dt.datetime.fromisoformat(str(t)) for t in (flipped_at, notice_at)]
    gap = as_time[0].replace(tzinfo=None) - as_time[1].replace(tzinfo=None)
    assert dt.timedelta(days=7) <= gap < dt.timedelta(days=7, hours=2)
    got = received(smtpd)
    assert got[("confirmation", "late@example.com")] == 1
    assert max(got.values()) == 1
