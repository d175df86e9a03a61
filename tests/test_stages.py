"""The staged flip (`[flip] stages`, issue 25 item 1), on SQLite and PostgreSQL, through the real settings service on
loopback (tests/settingsd.py): stage 1 switches only the accounts of its share; a conflict rate at stage 1 halts
the flip (`flip.halted`, `status`), nothing more is switched until `resume`, then it goes on; an error rate halts it
mid-stage; complaints halt it before the next stage; a rollback after a halt undoes what the stages switched; an
account's stage is the same in SQL, in this process and in another; the scheduler begins stage 2 `stage_wait` after
stage 1, by the simulated clock."""

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, literal, select, text

from campaign.cutoff import stages
from campaign.definition import parse_definition
from campaign.errors import InputError
from campaign.models import BOUNCE
from campaign.rollout import BUCKETS, Rollout, Stage, bucket
from campaign.store import stages as stage_store
from tests.conftest import ROOT, CliRun
from tests.settingsd import TOKEN, SettingsService, settingsd  # noqa: F401  (the fixture)
from tests.smtpd import SmtpServer
from tests.test_apply import apply_section, audit_text
from tests.test_flip import FROM, OTHERS, SLUG, TO, accounts_csv, audit, changes, definition, devices_csv
from tests.test_scheduler import run_once, steps

N = 300
SETTING = "voice_recordings"
ENV = {"CAMPAIGN_APPLY_TOKEN": TOKEN}
STAGED = 'stages = ["1%", "10%", "100%"]\nstage_wait = "2h"\n'


def stage_of(account: str, upto: int) -> bool:
    return bucket(SLUG, account) < upto


def accounts_below(upto: int, n: int = N) -> list[str]:
    return [f"a{i:05d}" for i in range(n) if stage_of(f"a{i:05d}", upto)]


def device(account: str) -> str:
    return "d" + account[1:]


@pytest.fixture
def staged(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path,
           settingsd: SettingsService) -> Callable[..., None]:  # noqa: F811
    """N accounts with a device each, the campaign (require_notice = false) applied through `settingsd`, with
    `[flip]` as given."""

    def make(flip: str, n: int = N, batch: int = 50, http: bool = True) -> None:
        assert run_cli("import", "accounts", str(write_file("a.csv", accounts_csv(n)))).exit_code == 0
        assert run_cli("import", "devices", str(write_file("d.csv", devices_csv(n, OTHERS)))).exit_code == 0
        path = definition(tmp_path, "require_notice = false")
        extra = apply_section(settingsd.url, batch) if http else ""
        path.write_text(path.read_text(encoding="utf-8") + extra + f"\n[flip]\n{flip}", encoding="utf-8")
        result = run_cli("create", str(path))
        assert result.exit_code == 0, result.output
        for i in range(n):
            settingsd.hold(f"d{i:05d}", SETTING, FROM)

    return make


def sent_devices(settingsd: SettingsService) -> set[str]:  # noqa: F811
    return {c["device_id"] for body in settingsd.bodies for c in body["changes"]}


def stage_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM flip_stage ORDER BY number")).mappings()]


def test_halted_by_conflicts_at_one_percent_then_resumed(run_cli: CliRun, engine: Engine, staged: Callable[..., None],
                                                          settingsd: SettingsService) -> None:  # noqa: F811
    staged(STAGED + "halt_on_conflict_rate = 0.2\n")
    first = accounts_below(100)
    assert 0 < len(first) < N // 20  # 1 %: a few accounts of 300
    # Half of stage 1's devices (at least one) were changed by their owners at the service: conflicts.
    owners = first[: max(1, len(first) // 2)]
    for a in owners:
        settingsd.hold(device(a), SETTING, "save_all")

    result = run_cli("flip", SLUG, "--before-cutoff", "--json", env=ENV)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert out["error"]["code"] == "flip_halted" and "conflict rate" in out["error"]["message"]
    st_ = out["stage"]
    assert (st_["number"], st_["of"], st_["percent"], st_["finished"], st_["state"]) == (1, 3, "1%", True, "halted")
    assert st_["halted"]["guard"] == "conflict_rate" and st_["halted"]["threshold"] == 0.2
    assert st_["halted"]["measured"] == round(len(owners) / len(first), 4) and st_["next"] is None
    # Only stage 1's devices went to the service, and only they have change rows, each of stage 1.
    assert sent_devices(settingsd) == {device(a) for a in first}
    rows = changes(engine)
    assert sorted(rows) == sorted(device(a) for a in first) and {r["stage"] for r in rows.values()} == {1}
    assert sorted(d for d, r in rows.items() if r["state"] == "left") == sorted(device(a) for a in owners)
    assert [(e["stage"], e["percent"], e["changes"], e["conflicts"]) for e in audit(engine, "flip.stage_finished")] \
        == [(1, "1%", len(first), len(owners))]
    halted = audit(engine, "flip.halted")
    assert [(e["stage"], e["guard"], e["threshold"]) for e in halted] == [(1, "conflict_rate", 0.2)]
    # status says so, in JSON and in words.
    status = json.loads(run_cli("status", SLUG, "--json").stdout)["flip_detail"]
    assert [(s["number"], s["percent"], s["state"]) for s in status["stages"]] == \
        [(1, "1%", "halted"), (2, "10%", "not begun"), (3, "100%", "not begun")]
    assert status["halted"]["guard"] == "conflict_rate" and status["halted"]["stage"] == 1
    words = run_cli("status", SLUG).output
    assert "HALTED" in words and "stage 1 (1%)" in words and "campaign resume" in words
    report = run_cli("report", SLUG, "--format", "html").output
    assert "Halted at stage 1 (1%)" in report and "Stage 2, 10%: not begun" in report
    assert "Flip halted at stage 1 (1%)" in report and "Flip stage 1 (1%) finished" in report  # the timeline

    # Nothing more is switched: a plain flip and `--stage 2` refuse, and nothing is sent.
    requests = len(settingsd.requests)
    for args in ((), ("--stage", "2")):
        again = run_cli("flip", SLUG, *args, "--json", env=ENV)
        assert again.exit_code == 1 and json.loads(again.stdout)["error"]["code"] == "flip_halted", again.output
    assert len(settingsd.requests) == requests and len(changes(engine)) == len(first)

    # `resume` goes on: stage 1 is not checked again, stage 2 is switched, stage 3 comes next.
    resumed = run_cli("resume", SLUG)
    assert resumed.exit_code == 0 and "halted at stage 1" in resumed.output, resumed.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM step WHERE name = 'flip:2'")).scalar_one() == "pending"
    second = run_cli("flip", SLUG, "--stage", "2", "--json", env=ENV)
    assert second.exit_code == 0, second.output
    st2 = json.loads(second.stdout)["stage"]
    assert (st2["number"], st2["finished"], st2["halted"], st2["next"]["number"]) == (2, True, None, 3)
    upto10 = accounts_below(1000)
    assert sent_devices(settingsd) == {device(a) for a in upto10}
    assert {d for d, r in changes(engine).items() if r["state"] == "changed"} == \
        {device(a) for a in upto10 if a not in owners}
    assert [r["state"] for r in stage_rows(engine)] == ["finished", "finished"]
    assert stage_rows(engine)[0]["resumed_by"] == "tester"
    # The last stage by hand: everyone, then `flip.finished`.
    third = run_cli("flip", SLUG, "--stage", "3", "--json", env=ENV)
    assert third.exit_code == 0, third.output
    assert len(changes(engine)) == N and [e["stages"] for e in audit(engine, "flip.finished")] == [3]
    assert settingsd.value("d00000", SETTING) in (TO, "save_all")


def test_halted_by_an_error_rate_mid_stage(run_cli: CliRun, engine: Engine, staged: Callable[..., None],
                                           settingsd: SettingsService) -> None:  # noqa: F811
    staged('stages = ["10%", "100%"]\nhalt_on_error_rate = 0.5\n', batch=4)
    first = accounts_below(1000)
    settingsd.script("401")  # the first request is refused: a 4xx for the whole batch
    result = run_cli("flip", SLUG, "--before-cutoff", "--json", env=ENV)
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["error"]["code"] == "flip_halted" and out["apply"]["paused"]
    assert out["stage"]["halted"] == {"guard": "error_rate", "measured": 1.0, "threshold": 0.5,
                                      "words": "error rate 1 reached halt_on_error_rate = 0.5"}
    assert out["stage"]["finished"] is False
    (row,) = stage_rows(engine)
    assert (row["state"], row["halted_from"], row["requests"], row["errors"]) == ("halted", "running", 1, 1)
    assert audit(engine, "flip.stage_finished") == [] and len(audit(engine, "flip.halted")) == 1
    # Resumed: the refused batch goes again under its key, stage 1 ends (not checked again), stage 2 is next.
    assert run_cli("resume", SLUG).exit_code == 0
    again = run_cli("flip", SLUG, "--json", env=ENV)
    assert again.exit_code == 0, again.output
    st_ = json.loads(again.stdout)["stage"]
    assert (st_["number"], st_["finished"], st_["next"]["number"]) == (1, True, 2)
    assert {d for d, r in changes(engine).items() if r["state"] == "changed"} == {device(a) for a in first}
    assert settingsd.keys()[0] == settingsd.keys()[1]  # the same batch, the same Idempotency-Key
    assert sorted(settingsd.applications.values()) == [1] * len(first)
    assert TOKEN not in audit_text(engine)


def test_complaints_halt_before_the_next_stage_and_a_rollback_undoes_the_stages(
        run_cli: CliRun, engine: Engine, staged: Callable[..., None]) -> None:
    staged('stages = ["10%", "50%", "100%"]\nhalt_on_complaints = 2\n', http=False)
    assert run_cli("flip", SLUG, "--before-cutoff").exit_code == 0
    assert run_cli("flip", SLUG, "--stage", "3").exit_code == 1  # stage 2 comes first
    first = accounts_below(1000)
    # Two complaints about the campaign's mail taken in since stage 1 began (one forged: it does not count).
    with engine.begin() as conn:
        campaign_id = conn.execute(text("SELECT id FROM campaign")).scalar_one()
        now = dt.datetime.now(dt.UTC)
        conn.execute(insert(BOUNCE), [
            {"key": f"mid:{k}", "kind": "complaint", "outcome": outcome, "campaign_id": campaign_id,
             "origin": "test", "imported_at": now, "imported_by": "test"}
            for k, outcome in enumerate(("applied", "recorded", "forged"))])
    result = run_cli("flip", SLUG, "--stage", "2")
    assert result.exit_code == 1 and "complaints 2 reached halt_on_complaints = 2" in result.output, result.output
    assert {d for d, r in changes(engine).items() if r["state"] == "changed"} == {device(a) for a in first}
    assert [(e["stage"], e["guard"], e["measured"]) for e in audit(engine, "flip.halted")] == [(1, "complaints", 2.0)]
    # A rollback after the halt puts back what stage 1 switched; the flip's steps are cancelled and it refuses.
    back = run_cli("rollback", SLUG, "--json")
    assert back.exit_code == 0 and json.loads(back.stdout)["rolled_back"] == len(first), back.output
    assert {r["state"] for r in changes(engine).values()} == {"rolled_back"}
    with engine.connect() as conn:
        assert set(conn.execute(text("SELECT state FROM step WHERE name LIKE 'flip%'")).scalars()) <= {"cancelled"}
        assert set(conn.execute(text("SELECT value FROM device_setting WHERE device_id LIKE 'd%'")).scalars()) \
            == {FROM}
    assert run_cli("flip", SLUG).exit_code == 1
    detail = json.loads(run_cli("status", SLUG, "--json").stdout)["flip_detail"]
    assert detail["rolled_back_at"] is not None and detail["stages"][0]["state"] == "halted"


def test_stage_by_hand_and_the_default_one_stage(run_cli: CliRun, engine: Engine,
                                                 staged: Callable[..., None]) -> None:
    staged("", http=False)  # [flip] with nothing in it: one stage, the flip as it always was
    bad = run_cli("flip", SLUG, "--before-cutoff", "--stage", "2")
    assert bad.exit_code == 2 and "has one stage" in bad.output
    result = run_cli("flip", SLUG, "--before-cutoff", "--stage", "1", "--json")
    assert result.exit_code == 0 and "stage" not in json.loads(result.stdout)
    assert len(changes(engine)) == N and {r["stage"] for r in changes(engine).values()} == {None}
    assert stage_rows(engine) == []
    # The one run went to its end: flip.finished, once (a second run finds nothing new, and says nothing more).
    finished = audit(engine, "flip.finished")
    assert len(finished) == 1
    assert run_cli("flip", SLUG, "--before-cutoff").exit_code == 0 and len(audit(engine, "flip.finished")) == 1
    assert "stages" not in json.loads(run_cli("status", SLUG, "--json").stdout)["flip_detail"]


def test_dry_run_of_a_stage_writes_nothing(run_cli: CliRun, engine: Engine, staged: Callable[..., None]) -> None:
    staged(STAGED, http=False)
    dry = run_cli("flip", SLUG, "--before-cutoff", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    out = json.loads(dry.stdout)
    assert out["changed"] == len(accounts_below(100)) and out["stage"]["number"] == 1
    assert changes(engine) == {} and stage_rows(engine) == []


# -- which stage ------------------------------------------------------------------------------------------

IDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(IDS, min_size=1, max_size=10))
def test_the_bucket_in_sql_is_the_bucket_in_python(engine: Engine, ids: list[str]) -> None:
    with engine.connect() as conn:
        for i in ids:
            assert conn.execute(select(stage_store.bucket(conn, SLUG, literal(i)))).scalar_one() == bucket(SLUG, i)


def test_the_stage_is_the_same_in_another_process() -> None:
    ids = [f"a{i:05d}" for i in range(200)] + ["ü-konto", "用户", "it's"]
    code = ("import json, sys; from campaign.rollout import bucket; "
            f"print(json.dumps([bucket({SLUG!r}, i) for i in json.loads(sys.stdin.read())]))")
    theirs = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=ROOT, check=True)
    assert json.loads(theirs.stdout) == [bucket(SLUG, i) for i in ids]
    # Fixed for good: the first four bytes of sha256("slug:account"), modulo 10000 — never hash().
    assert bucket(SLUG, "a00000") == int(hashlib.sha256(b"voice-local-processing:a00000").hexdigest()[:8], 16) \
        % 10000 == 4418
    shares = [bucket(SLUG, i) for i in ids[:200]]
    assert 0 < sum(b < 1000 for b in shares) < 60  # about a tenth below 10 %


def test_the_guards_are_values() -> None:
    r = Rollout(halt_on_conflict_rate=0.05, halt_on_error_rate=0.01, halt_on_complaints=20)
    assert stages.tripped(r, stages.Measured(100, 4, 10, 0, 19)) is None
    assert stages.tripped(r, stages.Measured(100, 5, 10, 0, 0)) == stages.Guard("conflict_rate", 0.05, 0.05)
    assert stages.tripped(r, stages.Measured(0, 0, 0, 0, 0)) is None  # a rate of nothing is 0
    assert stages.tripped(r, stages.Measured(0, 0, 50, 1, 0)) == stages.Guard("error_rate", 0.02, 0.01)
    assert stages.tripped(r, stages.Measured(0, 0, 0, 0, 20)) == stages.Guard("complaints", 20.0, 20.0)
    assert stages.tripped(Rollout(), stages.Measured(1, 1, 1, 1, 99)) is None  # no guard: none trips
    staged_ = Rollout(stages=(Stage(1, "1%", 100), Stage(2, "100%", BUCKETS)))
    assert [staged_.stage_of(b) for b in (0, 99, 100, 9999)] == [1, 1, 2, 2]


@pytest.mark.parametrize(("flip", "problem"), [
    ('stages = ["10%", "5%", "100%"]', "flip.stages: '5%' does not grow on '10%'"),
    ('stages = ["1%", "50%"]', "flip.stages: the last stage is '50%': it must be \"100%\""),
    ('stages = ["1", "100%"]', "flip.stages: '1' is not a share"),
    ('stages = ["0%", "100%"]', "flip.stages: '0%' is not a share"),
    ('stages = []', "flip.stages: must list 1 to 20 shares"),
    ('stage_wait = "soon"', "flip.stage_wait: 'soon' is not a duration"),
    ("halt_on_conflict_rate = 5", "flip.halt_on_conflict_rate: must be above 0 and at most 1"),
    ("halt_on_complaints = 0", "flip.halt_on_complaints: must be 1 or more"),
    ('halt_on_errors = 0.1', "flip.halt_on_errors: unknown key — did you mean `halt_on_error_rate`?"),
])
def test_a_bad_flip_section_is_refused_with_its_line(flip: str, problem: str) -> None:
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    line = len(text_.splitlines()) + 3  # after the blank line and [flip]
    with pytest.raises(InputError) as exc:
        parse_definition(text_ + f"\n[flip]\n{flip}\n", "def.toml")
    assert f"def.toml:{line}: {problem}" in str(exc.value)


# -- the scheduler ----------------------------------------------------------------------------------------

def test_the_scheduler_begins_the_next_stage_after_stage_wait(run_cli: CliRun, engine: Engine, db_url: str,
                                                               smtpd: SmtpServer, workdir: Path,
                                                               write_file: Callable[..., Path], tmp_path: Path) -> None:
    from tests import test_scheduler as ts

    clock = {"CAMPAIGN_CLOCK": ts.at(-dt.timedelta(days=20))}
    assert run_cli("import", "accounts", str(write_file("a.csv", ts.ACCOUNTS)), env=clock).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", ts.DEVICES)), env=clock).exit_code == 0
    path = ts.definition(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace("require_notice = true", "require_notice = false")
                    + '\n[flip]\nstages = ["50%", "100%"]\nstage_wait = "3h"\n', encoding="utf-8")
    assert run_cli("create", str(path), env=clock).exit_code == 0
    assert run_cli("schedule", SLUG, env=clock).exit_code == 0
    half = {f"d{i:03d}" for i in range(ts.N) if bucket(SLUG, f"a{i:03d}") < 5000}
    assert 0 < len(half) < ts.N
    # An hour after the cutoff: stage 1 only; stage 2 is due 3 h after it.
    proc = run_once(db_url, smtpd, workdir, ts.at(dt.timedelta(hours=1)))
    assert proc.returncode == 0, proc.stderr
    assert {d for d, r in changes(engine).items() if r["state"] == "changed"} == half
    assert steps(engine)["flip"] == "done" and steps(engine)["flip:2"] == "pending"
    # Two hours later stage 2 is not due yet; four hours later it has run, and the flip is finished.
    proc = run_once(db_url, smtpd, workdir, ts.at(dt.timedelta(hours=3)))
    assert proc.returncode == 0 and steps(engine)["flip:2"] == "pending", proc.stderr
    proc = run_once(db_url, smtpd, workdir, ts.at(dt.timedelta(hours=4, minutes=5)))
    assert proc.returncode == 0, proc.stderr
    assert steps(engine)["flip:2"] == "done" and len(changes(engine)) == ts.N
    assert [e["stages"] for e in audit(engine, "flip.finished")] == [2]
