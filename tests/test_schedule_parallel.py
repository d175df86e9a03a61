"""`schedule` renders on every core (issue 26): worker processes over shares of the audience give the answer one
process gives — the same count, the same refusal naming the same first problems — with exactly one audit event
and nothing scheduled on a failure; a killed render process or a Ctrl-C stops them all with a clear error and
leaves no process behind. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select, text

from campaign import db
from campaign.config import Config
from campaign.cutoff import planning
from campaign.errors import TemplateProblem
from campaign.models import ACCOUNT
from campaign.notices import everyone
from campaign.store import audience
from tests.conftest import ROOT, CliRun
from tests.waiting import wait_until

SLUG = "voice-local-processing"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def people(n: int) -> tuple[str, str]:
    accounts = "account_id,email,name,locale,timezone,country\n" + "".join(
        f"a{i:04d},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(n))
    devices = "device_id,account_id,name,model,voice_recordings\n" + "".join(
        f"d{i:04d},a{i:04d},Room {i},Echo Show 10,do_not_send\n" for i in range(n))
    return accounts, devices


def definition(tmp: Path) -> Path:
    """The shipped campaign, its cutoff in 2031, run by one person (no approval), no return path."""
    body = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    body = body.replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2031-03-28T00:00:00-07:00"')
    body = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", body)
    path = tmp / "def.toml"
    path.write_text(body, encoding="utf-8")
    return path


def templates_failing_for(tmp: Path, endings: tuple[str, ...]) -> Path:
    """A copy of the templates whose every en-US message fails for an account whose name ends in `endings`."""
    root = tmp / "templates"
    shutil.copytree(ROOT / "templates", root)
    base = root / SLUG / "en-US" / "_base.txt.j2"
    base.write_text(f"{{{{ 1 // 0 if account.name.endswith({endings!r}) else '' }}}}" + base.read_text("utf-8"),
                    encoding="utf-8")
    return root


@pytest.fixture
def campaign_of(run_cli: CliRun, write_file: object, tmp_path: Path) -> object:
    def make(n: int, templates: Path) -> dict[str, str]:
        accounts, devices = people(n)
        assert run_cli("import", "accounts", str(write_file("a.csv", accounts))).exit_code == 0  # type: ignore[operator]
        assert run_cli("import", "devices", str(write_file("d.csv", devices))).exit_code == 0  # type: ignore[operator]
        env = {"CAMPAIGN_TEMPLATES": str(templates)}
        result = run_cli("create", str(definition(tmp_path)), env=env)
        assert result.exit_code == 0, result.output
        return env
    return make


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def test_parallel_refusal_is_the_one_process_refusal_and_nothing_is_scheduled(
        run_cli: CliRun, engine: Engine, campaign_of: object, tmp_path: Path) -> None:
    # 60 accounts: 3 jobs take 12 shares of 5; accounts ending in 3 or 7 fail in every share, every wave (36).
    env = campaign_of(60, templates_failing_for(tmp_path, ("3", "7")))  # type: ignore[operator]
    one = run_cli("schedule", SLUG, "--jobs", "1", env=env)
    three = run_cli("schedule", SLUG, "--jobs", "3", env=env)
    assert one.exit_code == three.exit_code == 2
    assert three.stderr == one.stderr
    lines = [ln.strip() for ln in three.stderr.splitlines() if ln.startswith("  ")]
    assert "36 message(s) do not render; nothing was scheduled (the first 20)" in three.stderr
    assert len(lines) == 20
    # wave order, then account order, over every share: the notice's 12 failures, then the reminder's first 8
    named = [re.match(r"wave (\w+), account (a\d+): ", ln).groups() for ln in lines]  # type: ignore[union-attr]
    failing = [f"a{i:04d}" for i in range(60) if i % 10 in (3, 7)]
    assert named == [("notice", a) for a in failing] + [("reminder", a) for a in failing[:8]]
    assert all("ZeroDivisionError" in ln and "_base.txt.j2" in ln for ln in lines)
    assert rows(engine, "SELECT count(*) FROM step") == [(0,)]
    assert rows(engine, "SELECT state FROM campaign") == [("draft",)]
    assert rows(engine, "SELECT count(*) FROM audit_event WHERE action = 'campaign.schedule'") == [(0,)]


def test_parallel_schedule_renders_every_message_once_with_one_audit_event(
        run_cli: CliRun, engine: Engine, campaign_of: object, tmp_path: Path) -> None:
    env = campaign_of(50, ROOT / "templates")  # type: ignore[operator]
    dry = json.loads(run_cli("schedule", SLUG, "--jobs", "1", "--dry-run", "--json", env=env).stdout)
    result = run_cli("schedule", SLUG, "--jobs", "3", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rendered"] == dry["rendered"] == 150  # 3 waves × 50
    assert result.stderr == ""  # --json: no progress
    assert {str(n) for (n,) in rows(engine, "SELECT name FROM step")} == {
        "wave:notice", "wave:reminder", "wave:confirmation", "flip"}
    events = rows(engine, "SELECT detail FROM audit_event WHERE action = 'campaign.schedule'")
    assert len(events) == 1
    detail = json.loads(str(events[0][0]))
    assert (detail["rendered"], detail["render_jobs"]) == (150, 3)


def test_progress_counts_every_message_up_to_the_total(
        run_cli: CliRun, engine: Engine, db_url: str, campaign_of: object, tmp_path: Path) -> None:
    env = campaign_of(40, ROOT / "templates")  # type: ignore[operator]
    config = Config(database_url=db_url, templates=Path(env["CAMPAIGN_TEMPLATES"]), actor="tester")
    seen: list[tuple[int, int]] = []
    for jobs in (1, 2):
        seen.clear()
        timeline = planning.schedule(engine, config, SLUG, dry_run=True, jobs=jobs,
                                     progress=lambda done, total: seen.append((done, total)), progress_every=0.01)
        assert timeline.rendered == 120
        assert seen and seen[-1] == (120, 120)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert {t for _, t in seen} == {120}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.sets(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                           max_size=12), max_size=60),
       shares=st.integers(min_value=1, max_value=9))
def test_account_bounds_cover_every_account_once_in_order(engine: Engine, ids: set[str], shares: int) -> None:
    """The shares of the audience: together every account, none twice, each range after the one before — in the
    database's own order of ids (PostgreSQL's collation is not Python's), hostile ids included."""
    a = ACCOUNT
    with db.write(engine) as conn:
        conn.execute(delete(a))
        if ids:
            conn.execute(insert(a), [{"id": i, "email": "x@example.com", "name": "x", "locale": "en-US",
                                      "timezone": "UTC", "country": "US", "created_at": NOW, "updated_at": NOW}
                                     for i in ids])
    with db.read(engine) as conn:
        bounds = audience.account_bounds(conn, shares)
        assert len(bounds) <= shares + 1
        got: list[str] = []
        for after, upto in bounds:
            stmt = select(a.c.id).order_by(a.c.id)
            stmt = stmt.where(a.c.id > after) if after is not None else stmt
            got += conn.scalars(stmt.where(a.c.id <= upto) if upto is not None else stmt).all()
        assert got == conn.scalars(select(a.c.id).order_by(a.c.id)).all()
        assert sorted(got) == sorted(ids)


# -- a killed child, Ctrl-C: whole processes, forked as in production ---------------------------------------

def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name ([0] the state, [11] and [12] user and system ticks)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    fields = stat(pid)
    return bool(fields) and fields[0] != "Z"


def rendering(pid: int) -> bool:
    """The render process has used a fifth of a second of CPU: it renders (waiting, it uses none)."""
    fields = stat(pid)
    return bool(fields) and int(fields[11]) + int(fields[12]) >= os.sysconf("SC_CLK_TCK") // 5


def start_schedule(db_url: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "campaign", "schedule", SLUG, "--jobs", "2"], cwd=cwd,
                            env={**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "tester", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("how", ["kill a child", "ctrl-c", "sigterm"])
def test_a_killed_render_process_or_ctrl_c_stops_all_and_schedules_nothing(
        how: str, run_cli: CliRun, engine: Engine, db_url: str, campaign_of: object, tmp_path: Path,
        workdir: Path) -> None:
    env = campaign_of(3000, ROOT / "templates")  # type: ignore[operator]  # 9,000 messages: seconds of work
    proc = start_schedule(db_url, env, workdir)
    try:
        kids: set[int] = set()

        def both_started() -> bool:
            kids.update(children(proc.pid))
            return len(kids) >= 2 or proc.poll() is not None

        wait_until(both_started, timeout=60, what="two render processes")
        wait_until(lambda: any(rendering(k) for k in kids) or proc.poll() is not None, timeout=60,
                   what="the render processes at work")
        assert proc.poll() is None, proc.communicate()
        victim = min(kids)
        if how == "kill a child":
            os.kill(victim, signal.SIGKILL)
        elif how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if how == "kill a child":
        assert proc.returncode == 1, (out, err)
        assert f"a render process (pid {victim}) was killed by SIGKILL; nothing was scheduled" in err
    else:
        assert proc.returncode == 130, (out, err)
        assert "interrupted: the render processes were stopped; nothing was scheduled" in err
    assert "Traceback" not in err
    assert not [k for k in kids if alive(k)], "a render process was left behind"
    assert rows(engine, "SELECT count(*) FROM step") == [(0,)]
    assert rows(engine, "SELECT state FROM campaign") == [("draft",)]
    assert rows(engine, "SELECT count(*) FROM audit_event WHERE action = 'campaign.schedule'") == [(0,)]


def test_from_a_thread_render_processes_are_spawned_and_agree(
        run_cli: CliRun, engine: Engine, db_url: str, campaign_of: object, tmp_path: Path) -> None:
    """A command run in a thread (the demo, the console) cannot fork safely: its render processes are spawned
    afresh, and give the same refusal."""
    env = campaign_of(30, templates_failing_for(tmp_path, ("4",)))  # type: ignore[operator]
    config = Config(database_url=db_url, templates=Path(env["CAMPAIGN_TEMPLATES"]), actor="tester")
    got: list[BaseException | str] = []

    def run() -> None:
        assert everyone._context().get_start_method() == "spawn"
        try:
            planning.schedule(engine, config, SLUG, jobs=2)
        except TemplateProblem as exc:
            got.append(str(exc))
        except BaseException as exc:  # handed to the test's thread, to fail there
            got.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    one = run_cli("schedule", SLUG, "--jobs", "1", env=env)
    assert one.exit_code == 2
    assert got == [one.stderr.removeprefix("campaign: ").rstrip("\n")]
    assert "9 message(s) do not render" in str(got[0])  # a004, a014, a024 × 3 waves
    assert rows(engine, "SELECT count(*) FROM step") == [(0,)]
