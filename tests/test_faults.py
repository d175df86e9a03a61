"""A database that goes away: PostgreSQL restarted (`pg_ctl restart -m fast`, every session cut) in the middle of
a `send --workers 2`, of a `flip`, and of the scheduler's flip step. Each runs as a whole `python -m campaign`
process against a PostgreSQL server of the test's own (tests/pgserver.py), never the shared test server.

What must hold: the command resumes on its own within a minute (or stops with a clear error and a re-run
finishes); nothing is lost; no change is applied twice (one change row per device, the audit consistent); no
message goes twice beyond G2 (at most the connections open, with the same Message-ID); the scheduler flips once.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import logging
import os
import re
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
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.conftest import ROOT
from tests.pgserver import OwnPostgres, own_cli
from tests.settingsd import TOKEN as SETTINGS_TOKEN
from tests.settingsd import SettingsService, settingsd  # noqa: F401  (the fixture)
from tests.smtpd import SmtpServer
from tests.test_send import SLOW, SLUG, _ready_on
from tests.waiting import LogFile, logged, wait_until

pytestmark = pytest.mark.postgres

RESUMES_WITHIN = 60.0  # seconds: issue 11 §5, "resumes on its own within a minute"


def _env(url: str, **more: str) -> dict[str, str]:
    return {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_TEMPLATES": str(ROOT / "templates"),
            "CAMPAIGN_ACTOR": "tester", **more}


def _campaign(url: str, cwd: Path, *args: str, log: LogFile | None = None, **env: str) -> subprocess.Popen[str]:
    """`campaign ARGS…` in a process of its own; its stderr to `log`, read while it runs, if given."""
    command = [sys.executable, "-m", "campaign", *args]
    if log is None:
        return subprocess.Popen(command, env=_env(url, **env), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    with log.path.open("w", encoding="utf-8") as err:
        return subprocess.Popen(command, env=_env(url, **env), cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                text=True)


def _scalar(url: str, sql: str) -> Any:
    """One value, on a connection of its own that is closed at once (the server is restarted under it)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql)).all()]
    finally:
        engine.dispose()


def _wait_for(what: str, ready: Any, timeout: float = 120.0, every: float = 0.02) -> None:
    wait_until(ready, timeout, every, what=what)


# -- send --workers 2 ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_send_with_two_workers_resumes_after_a_postgres_restart(own_postgres: OwnPostgres, smtpd: SmtpServer,
                                                                tmp_path: Path) -> None:
    run = own_cli(own_postgres.url)
    _ready_on(run, tmp_path, SLOW.replace("rate_per_second = 40", "rate_per_second = 8"))  # 5 s for 40
    proc = _campaign(own_postgres.url, tmp_path, "send", SLUG, "--wave", "notice", "--workers", "2",
                     CAMPAIGN_SMTP_URL=smtpd.url)
    _wait_for("the first messages", lambda: len(smtpd.messages) >= 8 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    own_postgres.restart()
    back = time.monotonic()
    restarted = len(smtpd.messages)
    _out, err = proc.communicate(timeout=RESUMES_WITHIN + 60)
    took = time.monotonic() - back
    assert proc.returncode == 0, err
    assert restarted < 40  # the restart came in the middle of the send
    assert "database connection lost" in err  # it noticed, and went on by itself
    assert "Traceback" not in err
    assert took < RESUMES_WITHIN, took
    st = json.loads(run("status", SLUG, "--json").stdout)
    assert st["waves"]["notice"]["sent"] == 40
    assert st["waves"]["notice"]["pending"] == st["waves"]["notice"]["sending"] == 0
    # Everyone once; at most the connections open (2 workers x concurrency 4) twice, with the same Message-ID.
    delivered = Counter(m.recipients[0] for m in smtpd.messages)
    assert sorted(delivered) == sorted(f"user{i}@example.com" for i in range(40))
    assert sum(n - 1 for n in delivered.values()) <= 2 * 4, delivered
    ids: dict[str, set[str]] = {}
    for m in smtpd.messages:
        ids.setdefault(m.recipients[0], set()).add(str(email.message_from_bytes(m.data, policy=default)["Message-ID"]))
    assert all(len(v) == 1 for v in ids.values())
    stored = dict(_rows(own_postgres.url, "SELECT email, message_id FROM delivery WHERE state = 'sent'"))
    assert {a: next(iter(v)) for a, v in ids.items()} == stored
    # One wave.send and one wave.sent: the send ran once, from start to end.
    assert [a for (a,) in _rows(own_postgres.url, "SELECT action FROM audit_event WHERE action LIKE 'wave.%' "
                                                   "ORDER BY id")] == ["wave.send", "wave.sent"]


# -- flip ------------------------------------------------------------------------------------------------------

def _flip_definition(tmp: Path, cutoff: str | None = None) -> Path:
    """The shipped example, every affected device flipped (no notice required, no fair-notice wait)."""
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text_)  # no approval, no signing
    text_ = "\n".join(line for line in text_.splitlines() if not line.startswith("min_notice")) + "\n"
    text_ = text_.replace("require_notice = true", "require_notice = false")
    if cutoff is not None:
        text_ = text_.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    path = tmp / "flip.toml"
    path.write_text(text_, encoding="utf-8")
    return path


def _import_sample(run: Any, tmp: Path, accounts: int, **env: str) -> None:
    subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(accounts), "--out", str(tmp / "sample")],
                   check=True, capture_output=True)
    for args in (("db", "upgrade"), ("import", "accounts", str(tmp / "sample" / "accounts.csv")),
                 ("import", "devices", str(tmp / "sample" / "devices.csv"))):
        result = run(*args, env=env)
        assert result.exit_code == 0, result.output


def _affected(url: str) -> int:
    """Devices still affected (the shipped example's audience, written out by hand)."""
    return int(_scalar(url, "SELECT count(*) FROM device_setting s JOIN device d ON d.id = s.device_id "
                            "JOIN account a ON a.id = d.account_id WHERE s.key = 'voice_recordings' "
                            "AND s.value = 'do_not_send' AND d.model IN ('Echo Dot (4th Gen)', 'Echo Show 10', "
                            "'Echo Show 15') AND a.country IN ('US', 'CA', 'GB', 'DE', 'AT', 'JP')"))


def _changes(url: str) -> int:
    return int(_scalar(url, "SELECT count(*) FROM setting_change"))


def _flipped_once(url: str, devices: int) -> None:
    """Every affected device switched exactly once: one `changed` row per device, the device at `to` pointing
    at its own change row, and nothing else touched."""
    assert _rows(url, "SELECT count(*), count(DISTINCT device_id), min(state), max(state) FROM setting_change") \
        == [(devices, devices, "changed", "changed")]
    assert _scalar(url, "SELECT count(*) FROM setting_change c JOIN device_setting s ON s.device_id = c.device_id "
                        "AND s.key = c.setting WHERE s.value = 'dont_save' AND s.change_id = c.id "
                        "AND c.from_value = 'do_not_send' AND c.to_value = 'dont_save'") == devices
    assert _scalar(url, "SELECT count(*) FROM device_setting WHERE change_id IS NOT NULL") == devices
    assert _affected(url) == 0


@pytest.mark.slow
def _finished_after_restart(proc: subprocess.Popen[str], url: str, cwd: Path, command: str, key: str,
                            expected: int, back: float) -> None:
    """A `flip` or `rollback` whose database was restarted under it: it noticed, resumed and did all `expected`
    (its JSON's `key`) in this run; or it stopped with one clear line that says what to do, and a re-run
    finishes."""
    out, err = proc.communicate(timeout=RESUMES_WITHIN + 120)
    assert "Traceback" not in err
    if proc.returncode != 0:
        assert proc.returncode == 1 and "database" in err and f"run `campaign {command}` again" in err, err
        again = subprocess.run([sys.executable, "-m", "campaign", command, SLUG, "--json"], env=_env(url),
                               cwd=cwd, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    else:
        assert time.monotonic() - back < RESUMES_WITHIN + 60  # noticed, resumed, and finished
        assert "database connection lost" in err, err
        assert json.loads(out)[key] == expected, (err, out)  # this one run did them all


def test_flip_resumes_after_a_postgres_restart_each_device_once(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    url = own_postgres.url
    run = own_cli(url)
    _import_sample(run, tmp_path, 40_000)  # about 64,000 devices, 21,700 of them affected
    result = run("create", str(_flip_definition(tmp_path)))
    assert result.exit_code == 0, result.output
    devices = _affected(url)
    assert devices > 15_000
    proc = _campaign(url, tmp_path, "flip", SLUG, "--batch-size", "100", "--json")
    _wait_for("the flip to be under way", lambda: _changes(url) >= devices // 5 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    own_postgres.restart()
    back = time.monotonic()
    before = _changes(url)
    _finished_after_restart(proc, url, tmp_path, "flip", "changed", devices, back)
    assert before < devices  # the restart came in the middle of the flip
    _flipped_once(url, devices)
    # The audit agrees with the change rows: the flip events together changed each device once.
    noted = [json.loads(d) for (d,) in _rows(url, "SELECT detail FROM audit_event WHERE action = 'flip' ORDER BY id")]
    assert sum(n["changed"] for n in noted) == devices, noted
    # A flip run again changes nothing.
    again = subprocess.run([sys.executable, "-m", "campaign", "flip", SLUG, "--json"], env=_env(url), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == 0, again.stderr
    _flipped_once(url, devices)


@pytest.mark.slow
def test_rollback_resumes_after_a_postgres_restart_each_change_undone_once(own_postgres: OwnPostgres,
                                                                           tmp_path: Path) -> None:
    url = own_postgres.url
    run = own_cli(url)
    _import_sample(run, tmp_path, 40_000)
    assert run("create", str(_flip_definition(tmp_path))).exit_code == 0
    devices = _affected(url)
    result = run("flip", SLUG, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["changed"] == devices, result.output
    assert _affected(url) == 0

    def undone() -> int:
        return int(_scalar(url, "SELECT count(*) FROM setting_change WHERE state = 'rolled_back'"))

    proc = _campaign(url, tmp_path, "rollback", SLUG, "--batch-size", "100", "--json")
    _wait_for("the rollback to be under way", lambda: undone() >= devices // 5 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    own_postgres.restart()
    _finished_after_restart(proc, url, tmp_path, "rollback", "rolled_back", devices, time.monotonic())
    # Each change undone once: every row rolled back, every device at `from` again.
    assert _rows(url, "SELECT count(*), count(DISTINCT device_id), min(state), max(state) FROM setting_change") \
        == [(devices, devices, "rolled_back", "rolled_back")]
    assert _affected(url) == devices
    noted = [json.loads(d) for (d,) in _rows(url, "SELECT detail FROM audit_event WHERE action = 'rollback'")]
    assert sum(n["rolled_back"] for n in noted) == devices, noted


def test_flip_stops_with_a_clear_error_when_postgres_stays_away_and_a_rerun_finishes(
        own_postgres: OwnPostgres, tmp_path: Path) -> None:
    import threading

    from campaign import connection
    from campaign.cutoff import flip
    from campaign.db import make_engine
    url = own_postgres.url
    run = own_cli(url)
    _import_sample(run, tmp_path, 5_000)
    assert run("create", str(_flip_definition(tmp_path))).exit_code == 0
    devices = _affected(url)
    engine = make_engine(url)
    raised: list[BaseException] = []

    def flip_now() -> None:
        try:
            flip.flip(engine, SLUG, "tester", flip.FlipOptions(batch_size=5, reconnect_for=2.0))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=flip_now)
    thread.start()
    _wait_for("the flip to be under way", lambda: _changes(url) >= 200 or not thread.is_alive())
    own_postgres.stop()
    thread.join(60)
    assert not thread.is_alive()  # it stopped instead of waiting forever
    assert len(raised) == 1 and isinstance(raised[0], connection.DatabaseLost), raised
    assert "run `campaign flip` again" in str(raised[0]) and "database is unreachable" in str(raised[0])
    engine.dispose()
    own_postgres.start()
    partial = _changes(url)
    assert 200 <= partial < devices
    result = run("flip", SLUG, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["changed"] == devices - partial
    _flipped_once(url, devices)


def _through_a_service(url: str, service: SettingsService, tmp_path: Path, n: int) -> None:
    """Accounts, devices and the campaign applied through `service` ([apply] kind = "http"), on `url`."""
    from tests.test_apply import apply_section
    from tests.test_flip import FROM, OTHERS, accounts_csv, definition, devices_csv
    run = own_cli(url)
    (tmp_path / "a.csv").write_text(accounts_csv(n), encoding="utf-8")
    (tmp_path / "d.csv").write_text(devices_csv(n, OTHERS), encoding="utf-8")
    for args in (("db", "upgrade"), ("import", "accounts", str(tmp_path / "a.csv")),
                 ("import", "devices", str(tmp_path / "d.csv"))):
        assert run(*args).exit_code == 0
    path = definition(tmp_path, "require_notice = false")
    path.write_text(path.read_text(encoding="utf-8") + apply_section(service.url, 16, 2.0), encoding="utf-8")
    assert run("create", str(path)).exit_code == 0
    for i in range(n):
        service.hold(f"d{i:05d}", "voice_recordings", FROM)


def _while_the_database_is_away(own_postgres: OwnPostgres, service: SettingsService,
                                step: Callable[[Any], object]) -> None:
    """Run `step(engine)` in a thread; stop the database while its first request is at the service (applied
    there, its answer held back); start it again once the step has asked the service again (its client gave up
    on the answer after 2 s) and has found the database gone, and waited, twice (its log says so); the step must
    have waited, and finish."""
    import threading

    from campaign.db import make_engine
    service.script("apply_then_hang")  # the next batch is applied, its answer does not come back
    engine = make_engine(own_postgres.url)
    raised: list[BaseException] = []
    seen = len(service.requests)

    def run() -> None:
        try:
            step(engine)
        except BaseException as exc:
            raised.append(exc)

    with logged("campaign", logging.WARNING) as said:
        thread = threading.Thread(target=run)
        thread.start()
        _wait_for("a batch at the service", lambda: len(service.requests) > seen or not thread.is_alive())
        own_postgres.stop()  # before the client gives up on the answer (2 s) and asks again
        stopped = len(said)
        _wait_for("the batch asked again, and two tries of the database after it",
                  lambda: not thread.is_alive() or (len(service.requests) > seen + 1 and sum(
                      "database connection lost" in m for m in said[stopped:]) >= 2), timeout=60)
        assert thread.is_alive(), (raised, said)  # waiting for the database, not stopped
    own_postgres.start()
    thread.join(60)
    assert not thread.is_alive() and raised == [], raised
    engine.dispose()
    assert service.requests[seen + 1].key == service.requests[seen].key  # the same batch asked again


def test_flip_and_rollback_through_a_settings_service_wait_out_a_database_that_goes_away(
        own_postgres: OwnPostgres, settingsd: SettingsService, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`[apply] kind = "http"`: the database goes away while a batch is at the service (applied there, its answer
    not yet back). The flip, then the rollback, wait for the database, send the batch again under its
    Idempotency-Key (the service answers as before), and go on: every device changed once, undone once."""
    from campaign.cutoff import apply, flip
    url, n = own_postgres.url, 40
    _through_a_service(url, settingsd, tmp_path, n)
    monkeypatch.setenv("CAMPAIGN_APPLY_TOKEN", SETTINGS_TOKEN)
    after = dt.datetime(2025, 3, 28, 7, 5, tzinfo=dt.UTC)
    fast = flip.Service(retry=apply.Retry(attempts=4, base=0.01, cap=0.05))

    _while_the_database_is_away(own_postgres, settingsd,
                                lambda engine: flip.flip(engine, SLUG, "tester", now=after, service=fast))
    assert sorted(settingsd.applications.values()) == [1] * n  # each change applied once
    assert _rows(url, "SELECT count(*), min(state), max(state) FROM setting_change") == [(n, "changed", "changed")]

    _while_the_database_is_away(own_postgres, settingsd, lambda engine: flip.rollback(
        engine, SLUG, "tester", now=after + dt.timedelta(hours=1), service=fast))
    undone = {d: k for (d, op), k in settingsd.device_applications.items() if op == "rollback"}
    assert sorted(undone) == [f"d{i:05d}" for i in range(n)] and set(undone.values()) == {1}, undone
    assert _rows(url, "SELECT count(*), min(state), max(state) FROM setting_change") \
        == [(n, "rolled_back", "rolled_back")]


# -- the scheduler's flip step ---------------------------------------------------------------------------------

CUTOFF = dt.datetime(2031, 3, 28, 7, 0, tzinfo=dt.UTC)


def _scheduler(url: str, cwd: Path, smtpd: SmtpServer, log: LogFile) -> subprocess.Popen[str]:
    return _campaign(url, cwd, "scheduler", "run", "--poll", "1", log=log, CAMPAIGN_SMTP_URL=smtpd.url,
                     CAMPAIGN_CLOCK=(CUTOFF + dt.timedelta(minutes=1)).isoformat())


def _quiet(url: str, sql: str) -> Any:
    """`_scalar`, or None while the server is not back."""
    try:
        return _scalar(url, sql)
    except OperationalError:
        return None


@pytest.mark.slow
def test_scheduler_flips_once_through_a_postgres_restart(own_postgres: OwnPostgres, smtpd: SmtpServer,
                                                         tmp_path: Path) -> None:
    url = own_postgres.url
    run = own_cli(url)
    before = {"CAMPAIGN_CLOCK": (CUTOFF - dt.timedelta(days=20)).isoformat()}
    assert run("db", "upgrade").exit_code == 0
    # A few accounts first: `schedule` refuses an audience of nobody (the preflight), and renders each one's
    # notices, so the 40,000 come after it.
    _import_sample(run, tmp_path, 50, **before)
    result = run("create", str(_flip_definition(tmp_path, cutoff=CUTOFF.isoformat())), env=before)
    assert result.exit_code == 0, result.output
    result = run("schedule", SLUG, env=before)
    assert result.exit_code == 0, result.output
    _import_sample(run, tmp_path, 40_000, **before)
    devices = _affected(url)
    assert devices > 15_000
    # A leader and a standby, the cutoff a minute ago: the leader expires the unsent notices and flips.
    files = [LogFile(tmp_path / "leader.log"), LogFile(tmp_path / "standby.log")]
    leader = _scheduler(url, tmp_path, smtpd, files[0])
    _wait_for("a leader", lambda: _scalar(url, "SELECT holder FROM lease WHERE name = 'scheduler'") is not None
              or leader.poll() is not None)
    assert leader.poll() is None, files[0].text()
    (holder,) = _rows(url, "SELECT holder FROM lease WHERE name = 'scheduler'")[0]
    standby = _scheduler(url, tmp_path, smtpd, files[1])
    waits = "another scheduler leads"  # what a scheduler that does not lead says at each look (one a second)
    try:
        _wait_for("the flip step", lambda: _scalar(url, "SELECT state FROM step WHERE name = 'flip'") != "pending")
        assert _changes(url) < devices
        own_postgres.restart()
        looked = sum(f.count(waits) for f in files)
        expired_then = wait_until(lambda: _quiet(url, "SELECT expires_at FROM lease WHERE name = 'scheduler'"),
                                  60, 0.2, what="the lease, read after the restart")
        _wait_for("the flip to be done", lambda: _quiet(url, "SELECT state FROM step WHERE name = 'flip'") == "done",
                  timeout=RESUMES_WITHIN + 60, every=0.2)
        # Who leads now, after the restart: the lease renewed since (the lead is renewed every 15 s), the lead's
        # advisory lock taken again, and the one that does not lead has looked for the lead twice since — each an
        # event that comes after the point where a scheduler that does not live through a restart would have
        # stopped.

        def settled() -> bool:
            expires = _quiet(url, "SELECT expires_at FROM lease WHERE name = 'scheduler'")
            return expires is not None and expires > expired_then and sum(f.count(waits) for f in files) >= looked + 2 \
                and _quiet(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == 1

        _wait_for("the lead renewed and its lock taken again, and the standby looking on", settled,
                  timeout=RESUMES_WITHIN, every=0.2)
        alive = [leader.poll(), standby.poll()]
        ((now_holder, _expires),) = _rows(url, "SELECT holder, expires_at FROM lease WHERE name = 'scheduler'")
    finally:
        for proc in (leader, standby):
            proc.send_signal(signal.SIGTERM)
        for proc in (leader, standby):
            proc.communicate(timeout=60)
        logs = [f.text() for f in files]
    both = f"leader's log:\n{logs[0]}\nstandby's log:\n{logs[1]}"
    assert alive == [None, None], both  # both were still running, each having gone on after the restart
    assert leader.returncode == standby.returncode == 0, logs
    assert all("Traceback" not in log for log in logs), logs
    _flipped_once(url, devices)
    assert dict(_rows(url, "SELECT name, state FROM step")) == {
        "wave:notice": "expired", "wave:reminder": "expired", "flip": "done", "wave:confirmation": "pending"}
    # The flip ran once: the audit agrees with the change rows, and no run after it found anything to do.
    noted = [json.loads(d) for (d,) in _rows(url, "SELECT detail FROM audit_event WHERE action = 'flip' ORDER BY id")]
    assert sum(n["changed"] for n in noted) == devices and all(n["changed"] for n in noted), (noted, logs)
    # The leader kept the lead (the standby may not take it while the leader's lease runs); or, had it lost it,
    # the standby took it over once, and its flip went on where the first stopped.
    taken_over = "took over" in logs[1]
    assert now_holder == holder or taken_over, logs
    assert "another scheduler leads" in logs[1] and logs[0].count(" leads\n") == 1, logs
