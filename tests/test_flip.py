"""The flip (G6), fair notice (G13) and the rollback (G7), with their change rows, on SQLite and PostgreSQL:
only devices still at `from` change, each with its change row in the same transaction; a second run changes
nothing; a run killed with SIGKILL and started again ends with one change per device; notices decide who
is held back and who waits; a rollback never overwrites a person's own later choice; every dry run leaves
the database as it was."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text

from campaign.cutoff import flip
from campaign.errors import StateError
from campaign.models import DELIVERY, WAVE
from tests.conftest import ROOT, CliRun, table_counts

SLUG = "voice-local-processing"
CUTOFF = dt.datetime(2025, 3, 28, 7, 0, tzinfo=dt.UTC)
N = 40
FROM, TO = "do_not_send", "dont_save"


def accounts_csv(n: int) -> str:
    places = [("en-US", "America/New_York", "US"), ("de-DE", "Europe/Berlin", "DE"), ("ja-JP", "Asia/Tokyo", "JP"),
              ("es-US", "America/Los_Angeles", "US")]
    return "account_id,email,name,locale,timezone,country\n" + "".join(
        f"a{i:05d},user{i}@example.com,User {i},{loc},{tz},{c}\n" for i, (loc, tz, c) in
        ((i, places[i % 4]) for i in range(n)))


def devices_csv(n: int, extra: str = "") -> str:
    return "device_id,account_id,name,model,voice_recordings\n" + "".join(
        f"d{i:05d},a{i:05d},Room {i},Echo Show 10,{FROM}\n" for i in range(n)) + extra


# Two devices the flip must not touch: one already at `to`'s neighbour, one outside the audience's models.
OTHERS = "x00001,a00001,Hall,Echo Show 10,save_all\nx00002,a00002,Garage,Other Speaker,do_not_send\n"


def definition(tmp: Path, migration: str = "require_notice = true") -> Path:
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    # The shipped example's own min_notice goes: each test says what it wants in `migration`.
    text_ = "\n".join(line for line in text_.splitlines() if not line.startswith("min_notice")) + "\n"
    text_ = text_.replace("require_notice = true", migration)
    # ... and its [approval] and [bounces] (tests/test_approval.py, tests/test_bounces.py flip with those).
    text_ = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text_)
    path = tmp / "def.toml"
    path.write_text(text_, encoding="utf-8")
    return path


@pytest.fixture
def setup(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> Callable[..., None]:
    """Import accounts and devices and create the campaign (cutoff 2025-03-28T07:00Z) with `migration`."""

    def make(migration: str = "require_notice = true", n: int = N, extra: str = OTHERS) -> None:
        assert run_cli("import", "accounts", str(write_file("a.csv", accounts_csv(n)))).exit_code == 0
        assert run_cli("import", "devices", str(write_file("d.csv", devices_csv(n, extra)))).exit_code == 0
        result = run_cli("create", str(definition(tmp_path, migration)))
        assert result.exit_code == 0, result.output

    return make


def notify(engine: Engine, account_ids: Iterable[str], at: dt.datetime, state: str = "sent",
           wave: str = "notice") -> None:
    """Record the wave as delivered to these accounts at `at` (the ledger as a send leaves it)."""
    with engine.begin() as conn:
        wave_id, campaign_id = conn.execute(select(WAVE.c.id, WAVE.c.campaign_id).where(WAVE.c.name == wave)).one()
        conn.execute(insert(DELIVERY), [
            {"campaign_id": campaign_id, "wave_id": wave_id, "account_id": a, "state": state, "email": f"{a}@x",
             "attempts": 1, "expires_at": CUTOFF, "sent_at": at, "updated_at": at, "message_id": f"<{a}@x>"}
            for a in account_ids])


def settings(engine: Engine) -> dict[str, tuple[str, int | None]]:
    with engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(text(
            "SELECT device_id, value, change_id FROM device_setting WHERE key = 'voice_recordings'"))}


def changes(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {r["device_id"]: dict(r) for r in conn.execute(text("SELECT * FROM setting_change")).mappings()}


def audit(engine: Engine, action: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [{"actor": r[0], **json.loads(r[1])} for r in conn.execute(text(
            "SELECT actor, detail FROM audit_event WHERE action = :a ORDER BY id"), {"a": action})]


def accounts(n: int) -> list[str]:
    return [f"a{i:05d}" for i in range(n)]


AFTER = CUTOFF + dt.timedelta(minutes=5)


def test_flip_changes_only_devices_still_at_from(engine: Engine, setup: Callable[..., None]) -> None:
    setup()
    notify(engine, accounts(N), CUTOFF - dt.timedelta(days=14))
    result = flip.flip(engine, SLUG, "ops", flip.FlipOptions(batch_size=7), now=AFTER)
    assert (result.changed, result.held_back, result.waiting, result.batches) == (N, 0, 0, 6)
    after = settings(engine)
    assert after["x00001"] == ("save_all", None) and after["x00002"] == (FROM, None)
    rows = changes(engine)
    assert sorted(rows) == [f"d{i:05d}" for i in range(N)]
    for device, row in rows.items():
        # the change row and the setting it changed, together: the setting points at its change
        assert after[device] == (TO, row["id"])
        assert (row["state"], row["from_value"], row["to_value"], row["actor"]) == ("changed", FROM, TO, "ops")
        assert row["account_id"] == "a" + device[1:]
    assert audit(engine, "flip") == [{"actor": "ops", "changed": N, "held_back": 0, "waiting": 0, "next_due": None,
                                      "batches": 6, "before_cutoff": False, "include_unnotified": False}]
    # A second run changes nothing (G6), and says so.
    before = table_counts(engine)
    again = flip.flip(engine, SLUG, "ops", now=AFTER + dt.timedelta(hours=1))
    assert (again.changed, again.total_changed, again.batches) == (0, N, 0)
    assert {k: v for k, v in table_counts(engine).items() if k != "audit_event"} == \
        {k: v for k, v in before.items() if k != "audit_event"}
    # The scheduler's call records nothing when nothing came due.
    flip.flip_due(engine, SLUG, "scheduler", now=AFTER + dt.timedelta(hours=2))
    assert len(audit(engine, "flip")) == 2


def test_refuses_before_the_cutoff_unless_told(run_cli: CliRun, engine: Engine, setup: Callable[..., None]) -> None:
    setup("require_notice = false")
    with pytest.raises(StateError, match="has not come yet"):
        flip.flip(engine, SLUG, "ops", now=CUTOFF - dt.timedelta(seconds=1))
    # A dry run is a preview, before the cutoff too, without --before-cutoff (issue 23): nothing written.
    before = table_counts(engine)
    preview = flip.flip(engine, SLUG, "ops", flip.FlipOptions(dry_run=True), now=CUTOFF - dt.timedelta(days=1))
    assert preview.dry_run and preview.changed == N and table_counts(engine) == before
    result = flip.flip(engine, SLUG, "ops", flip.FlipOptions(before_cutoff=True), now=CUTOFF - dt.timedelta(days=1))
    assert result.changed == N
    assert audit(engine, "flip")[0]["before_cutoff"] is True


def test_require_notice_holds_back_and_bounced_notice_does_not_count(
        run_cli: CliRun, engine: Engine, setup: Callable[..., None]) -> None:
    setup()
    notify(engine, accounts(30), CUTOFF - dt.timedelta(days=14))
    notify(engine, ["a00030", "a00031"], CUTOFF - dt.timedelta(days=14), state="bounced")  # sent, then bounced
    notify(engine, ["a00032"], CUTOFF - dt.timedelta(days=14), state="failed")
    notify(engine, ["a00033"], CUTOFF - dt.timedelta(days=3), wave="reminder")  # a reminder is a notice too
    result = run_cli("flip", SLUG, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    held = [f"d{i:05d}" for i in (30, 31, 32, *range(34, N))]
    assert (out["changed"], out["held_back"], out["waiting"]) == (31, len(held), 0)
    assert [h["device_id"] for h in out["held_back_devices"]] == held
    rows = changes(engine)
    assert {d for d, r in rows.items() if r["state"] == "held_back"} == set(held)
    assert all(settings(engine)[d] == (FROM, None) for d in held)
    assert rows["d00030"]["note"] and "notice" in str(rows["d00030"]["note"])
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["flip"]["held_back"] == len(held) and status["flip"]["changed"] == 31
    assert sum(status["flip_detail"]["held_back_why"].values()) == len(held)
    text_out = run_cli("flip", SLUG).output
    assert "held back: 9 device(s)" in text_out and "d00039" in text_out
    # A late notice, then the flip again: that device goes; --include-unnotified takes the rest.
    notify(engine, ["a00034"], CUTOFF + dt.timedelta(hours=1), wave="reminder")
    assert flip.flip(engine, SLUG, "ops", now=AFTER + dt.timedelta(hours=2)).changed == 1
    result = run_cli("flip", SLUG, "--include-unnotified", "--json")
    out = json.loads(result.stdout)
    assert (out["changed"], out["held_back"], out["total_changed"]) == (8, 0, N)
    assert {r["state"] for r in changes(engine).values()} == {"changed"}
    assert len(changes(engine)) == N


def test_fair_notice_timing(engine: Engine, setup: Callable[..., None], run_cli: CliRun) -> None:
    setup('require_notice = true\nmin_notice = "7d"')
    on_time = CUTOFF - dt.timedelta(days=14)
    late = CUTOFF - dt.timedelta(days=3)
    notify(engine, accounts(N)[:30], on_time)
    notify(engine, accounts(N)[30:], late)
    notify(engine, ["a00035"], CUTOFF - dt.timedelta(days=20), state="bounced", wave="reminder")  # doesn't count
    due = late + dt.timedelta(days=7)
    result = flip.flip(engine, SLUG, "ops", now=CUTOFF)
    assert (result.changed, result.waiting, result.next_due, result.last_due) == (30, 10, due, due)
    assert [w["due_at"] for w in result.waiting_devices] == [due.isoformat()] * 10
    rows = changes(engine)
    for i in range(30, N):
        row = rows[f"d{i:05d}"]
        assert row["state"] == "waiting" and row["flipped_at"] is None
        assert settings(engine)[f"d{i:05d}"] == (FROM, None)
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["flip_detail"]["waiting"] == 10 and status["flip_detail"]["next_due"] == due.isoformat()
    # Before it is due, the scheduler's flip changes nothing; once due, it flips them (G13).
    before = table_counts(engine)
    assert flip.flip_due(engine, SLUG, "scheduler", now=due - dt.timedelta(seconds=1)).changed == 0
    assert table_counts(engine) == before
    done = flip.flip_due(engine, SLUG, "scheduler", now=due)
    assert (done.changed, done.waiting, done.total_changed) == (10, 0, N)
    for i in range(30, N):
        row = changes(engine)[f"d{i:05d}"]
        assert row["state"] == "changed" and settings(engine)[f"d{i:05d}"] == (TO, row["id"])
        # no device switched sooner than min_notice after its account's first delivered notice
        flipped = row["flipped_at"]
        assert flipped is not None
        assert row["due_at"] is not None  # the evidence keeps when fair notice let it go
    assert audit(engine, "flip")[-1]["actor"] == "scheduler"


def test_rollback_leaves_a_persons_own_later_choice(run_cli: CliRun, engine: Engine, setup: Callable[..., None],
                                                    write_file: Callable[..., Path]) -> None:
    setup("require_notice = false")
    assert run_cli("flip", SLUG).exit_code == 0
    header = "device_id,account_id,name,model,voice_recordings\n"
    # d00001 chose another value; d00002 chose another and then `to` again: both are theirs now.
    assert run_cli("import", "devices", str(write_file("o1.csv", header + "d00001,a00001,Room 1,Echo Show 10,"
                                                       "save_all\nd00002,a00002,Room 2,Echo Show 10,save_all\n"
                                                       ))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("o2.csv", header + "d00002,a00002,Room 2,Echo Show 10,"
                                                       f"{TO}\n"))).exit_code == 0
    result = run_cli("rollback", SLUG, "--batch-size", "7", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["rolled_back"], out["left"]) == (N - 2, 2)
    assert sorted(r["device_id"] for r in out["left_devices"]) == ["d00001", "d00002"]
    now = settings(engine)
    assert now["d00001"] == ("save_all", None) and now["d00002"] == (TO, None)
    rows = changes(engine)
    assert len(rows) == N  # nothing deleted
    for i in range(N):
        device = f"d{i:05d}"
        if device in ("d00001", "d00002"):
            assert rows[device]["state"] == "left" and rows[device]["rolled_back_at"] is None
        else:
            assert rows[device]["state"] == "rolled_back" and rows[device]["rolled_back_at"] is not None
            assert now[device][0] == FROM
    assert "save_all" in str(rows["d00001"]["note"]) and TO in str(rows["d00002"]["note"])
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["flip"] == {"changed": 0, "held_back": 0, "rolled_back": N - 2, "left": 2}
    # Afterwards the flip refuses, and a second rollback changes nothing.
    refused = run_cli("flip", SLUG, "--include-unnotified")
    assert refused.exit_code == 1 and "rolled back" in refused.stderr
    # A program (the scheduler) reads the outcome's stable code, not the words.
    as_json = run_cli("flip", SLUG, "--include-unnotified", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "rolled_back"
    with pytest.raises(StateError):
        flip.flip_due(engine, SLUG, "scheduler")
    again = json.loads(run_cli("rollback", SLUG, "--json").stdout)
    assert (again["rolled_back"], again["left"], again["total_rolled_back"]) == (0, 0, N - 2)
    assert [e["rolled_back"] for e in audit(engine, "rollback")] == [N - 2, 0]


def _file_bytes(db_url: str) -> bytes | None:
    if not db_url.startswith("sqlite:///"):
        return None
    return Path(db_url.removeprefix("sqlite:///")).read_bytes()


def test_every_dry_run_changes_nothing(run_cli: CliRun, engine: Engine, db_url: str,
                                       setup: Callable[..., None]) -> None:
    setup('require_notice = true\nmin_notice = "7d"')
    notify(engine, accounts(N)[:20], CUTOFF - dt.timedelta(days=14))
    late = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(microsecond=0)  # the CLI runs on the real clock
    notify(engine, accounts(N)[20:30], late)

    def unchanged(*args: str) -> dict[str, object]:
        engine.dispose()  # the file as the last connection leaves it (WAL checkpointed)
        before, before_bytes = table_counts(engine), None
        engine.dispose()
        before_bytes = _file_bytes(db_url)
        result = run_cli(*args, "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        assert _file_bytes(db_url) == before_bytes
        assert table_counts(engine) == before
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    would = unchanged("flip", SLUG)
    assert (would["dry_run"], would["changed"], would["held_back"], would["waiting"]) == (True, 20, 10, 10)
    assert would["next_due"] == (late + dt.timedelta(days=7)).isoformat()
    # The dry run said exactly what the run does.
    did = json.loads(run_cli("flip", SLUG, "--json").stdout)
    for key in ("changed", "held_back", "waiting", "next_due", "held_back_devices", "batches"):
        assert did[key] == would[key], key
    assert [w["device_id"] for w in did["waiting_devices"]] == [w["device_id"] for w in would["waiting_devices"]]
    would_back = unchanged("rollback", SLUG)
    assert (would_back["rolled_back"], would_back["left"]) == (20, 0)
    back = json.loads(run_cli("rollback", SLUG, "--json").stdout)
    assert (back["rolled_back"], back["left"], back["left_devices"]) == (20, 0, would_back["left_devices"])
    text_out = run_cli("flip", SLUG, "--dry-run")
    assert text_out.exit_code == 1 and "rolled back" in text_out.stderr


def test_sigkill_midway_then_again_one_change_per_device(engine: Engine, db_url: str,
                                                        setup: Callable[..., None], tmp_path: Path) -> None:
    n = 3000
    setup("require_notice = false", n=n)
    engine.dispose()
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "ops",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    cmd = [sys.executable, "-m", "campaign", "flip", SLUG, "--batch-size", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with engine.connect() as conn:
            seen = conn.execute(text("SELECT count(*) FROM setting_change")).scalar_one()
        if seen >= 100:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    engine.dispose()
    with engine.connect() as conn:
        partial = conn.execute(text("SELECT count(*) FROM setting_change")).scalar_one()
        switched = conn.execute(text(f"SELECT count(*) FROM device_setting WHERE value = '{TO}'")).scalar_one()
    assert proc.returncode == -signal.SIGKILL
    assert 100 <= partial < n, "the flip should have been killed midway"
    assert switched == partial  # each committed batch holds its change rows and its changes together
    again = subprocess.run([*cmd[:-2], "--json"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] == n - partial
    rows = changes(engine)
    now = settings(engine)
    assert len(rows) == n and all(r["state"] == "changed" for r in rows.values())
    assert all(now[d] == (TO, r["id"]) for d, r in rows.items())
