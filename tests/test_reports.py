"""The evidence (G12), on SQLite and PostgreSQL: `campaign report` as CSV, JSON Lines and HTML, one person's
whole story (`--account`, `--email`), and `campaign log`. One campaign with every kind of story: told and
switched, a bounce and a suppression (held back), told late (waiting for fair notice), two devices, a person
who changed their own setting first, and a rollback."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from campaign.cutoff import flip
from campaign.evidence import htmlreport, status
from campaign.models import DELIVERY, WAVE
from tests.conftest import ROOT, CliRun, table_counts

SLUG = "voice-local-processing"
CUTOFF = dt.datetime(2025, 3, 28, 7, 0, tzinfo=dt.UTC)
AFTER = CUTOFF + dt.timedelta(minutes=5)
EARLY = CUTOFF - dt.timedelta(days=14)  # 2025-03-14 07:00 UTC = 03:00 EDT in New York
LATE = CUTOFF - dt.timedelta(days=2)
HOSTILE = '<img src=x onerror="alert(1)">&'


def iso(t: dt.datetime) -> str:
    """How the CSV and JSON Lines reports write a time, on either database: UTC, with microseconds."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")

ACCOUNTS = """account_id,email,name,locale,timezone,country
a00000,user0@example.com,Ana Told,en-US,America/New_York,US
a00001,user1@example.com,Ben Bounced,de-DE,Europe/Berlin,DE
a00002,user2@example.com,Cai Suppressed,ja-JP,Asia/Tokyo,JP
a00003,user3@example.com,Dee Late,en-US,America/Chicago,US
a00004,user4@example.com,Eve Two,es-US,America/Los_Angeles,US
a00005,user5@example.com,Fay Chose,en-US,America/New_York,US
a00006,user6@example.com,Gus Elsewhere,en-US,America/New_York,US
"""
DEVICES = """device_id,account_id,name,model,voice_recordings
d00000,a00000,Kitchen,Echo Show 10,do_not_send
d00001,a00001,Küche,Echo Show 10,do_not_send
d00002,a00002,Living,Echo Show 10,do_not_send
d00003,a00003,Office,Echo Show 15,do_not_send
d00004,a00004,Bedroom,Echo Show 10,do_not_send
e00004,a00004,Hall,Echo Dot (4th Gen),do_not_send
d00005,a00005,Study,Echo Show 10,do_not_send
d00006,a00006,Garage,Other Speaker,do_not_send
"""


def definition(tmp: Path) -> Path:
    path = tmp / "def.toml"
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    # Without the shipped [approval] and [bounces] (tests/test_approval.py, tests/test_bounces.py have them).
    path.write_text(re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text_), encoding="utf-8")
    return path


def deliver(engine: Engine, rows: list[tuple[str, str, str, dt.datetime, str | None]]) -> None:
    """Ledger rows as a send leaves them: (account, wave, state, when, error)."""
    with engine.begin() as conn:
        waves = {n: (i, c) for n, i, c in conn.execute(select(WAVE.c.name, WAVE.c.id, WAVE.c.campaign_id))}
        conn.execute(insert(DELIVERY), [
            {"campaign_id": waves[w][1], "wave_id": waves[w][0], "account_id": a, "state": state,
             "email": f"user{a[-1]}@example.com", "locale": "en-US", "attempts": 1, "expires_at": CUTOFF,
             "sent_at": at if state in ("sent", "bounced") else None, "updated_at": at, "last_error": error,
             "message_id": None if state == "suppressed" else f"<{w}.{a}@example.com>"}
            for a, w, state, at, error in rows])


@pytest.fixture
def story(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path], tmp_path: Path) -> Engine:
    """Every kind of story, up to the flip just after the cutoff (by a hostile-named actor)."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("suppress", "add", "user2@example.com", "--reason", "asked <not> to be mailed").exit_code == 0
    result = run_cli("create", str(definition(tmp_path)))
    assert result.exit_code == 0, result.output
    deliver(engine, [
        ("a00000", "notice", "sent", EARLY, None),
        ("a00000", "reminder", "sent", EARLY + dt.timedelta(days=11), None),
        ("a00001", "notice", "bounced", EARLY, "550 5.1.1 <user1@example.com>: no such user"),
        ("a00002", "notice", "suppressed", EARLY, None),
        ("a00003", "notice", "sent", LATE, None),
        ("a00004", "notice", "sent", EARLY, None),
        ("a00005", "notice", "sent", EARLY, None),
    ])
    # Fay chooses another setting herself before the cutoff: no longer affected, never switched.
    fay = write_file("fay.csv", "device_id,account_id,name,model,voice_recordings\n"
                                "d00005,a00005,Study,Echo Show 10,save_all\n")
    assert run_cli("import", "devices", str(fay)).exit_code == 0
    result = flip.flip(engine, SLUG, HOSTILE, now=AFTER)
    assert (result.changed, result.held_back, result.waiting) == (3, 2, 1)
    return engine


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_a_row_per_account_and_device(run_cli: CliRun, story: Engine) -> None:
    result = run_cli("report", SLUG, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("account_id,email,locale,timezone,notice_state,notice_at,notice_message_id,"
                                    "notice_error,notice_delivered_at,notice_message_sha256,reminder_state,")
    rows = rows_of(result.output)
    assert [(r["account_id"], r["device_id"]) for r in rows] == [
        ("a00000", "d00000"), ("a00001", "d00001"), ("a00002", "d00002"), ("a00003", "d00003"),
        ("a00004", "d00004"), ("a00004", "e00004"), ("a00005", "")]  # Fay: told, nothing switched
    by = {(r["account_id"], r["device_id"]): r for r in rows}
    ana = by["a00000", "d00000"]
    assert (ana["notice_state"], ana["notice_at"], ana["notice_message_id"]) == \
        ("sent", iso(EARLY), "<notice.a00000@example.com>")
    assert (ana["reminder_state"], ana["confirmation_state"], ana["confirmation_at"]) == ("sent", "", "")
    assert (ana["change"], ana["from"], ana["to"], ana["held_back"]) == ("changed", "do_not_send", "dont_save", "false")
    assert ana["flipped_at"] == iso(AFTER)
    ben = by["a00001", "d00001"]
    assert (ben["notice_state"], ben["notice_error"]) == ("bounced", "550 5.1.1 <user1@example.com>: no such user")
    assert (ben["change"], ben["held_back"], ben["held_back_why"], ben["flipped_at"]) == \
        ("held_back", "true", "no delivered notice", "")
    assert by["a00002", "d00002"]["notice_state"] == "suppressed"
    assert by["a00002", "d00002"]["notice_message_id"] == ""
    dee = by["a00003", "d00003"]
    due = LATE + dt.timedelta(days=7)
    assert (dee["change"], dee["held_back"], dee["due_at"]) == ("waiting", "true", iso(due))
    assert dee["held_back_why"] == f"waiting for fair notice until {iso(due)}"
    assert by["a00005", ""]["notice_state"] == "sent"
    assert "a00006" not in {r["account_id"] for r in rows}  # never in the campaign


def test_jsonl_is_the_spec_shape(run_cli: CliRun, story: Engine, tmp_path: Path) -> None:
    out = tmp_path / "report.jsonl"
    result = run_cli("report", SLUG, "--format", "jsonl", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"6 accounts written to {out}" in result.output
    assert not list(tmp_path.glob("*.partial"))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [x["account_id"] for x in lines] == ["a00000", "a00001", "a00002", "a00003", "a00004", "a00005"]
    for obj in lines:
        assert {"account_id", "email", "locale", "waves", "devices"} <= set(obj)
        assert list(obj["waves"]) == ["notice", "reminder", "confirmation"]
        for wave in obj["waves"].values():
            assert set(wave) == {"state", "at", "message_id", "error", "delivered_at", "message_sha256"}
        for dev in obj["devices"]:
            assert {"device_id", "from", "to", "flipped_at", "rolled_back_at", "held_back"} <= set(dev)
            assert isinstance(dev["held_back"], bool)
    ana, ben, _cai, dee, eve, fay = lines
    assert ana["email"] == "user0@example.com" and ana["locale"] == "en-US"
    assert ana["waves"]["notice"] == {"state": "sent", "at": iso(EARLY),
                                      "message_id": "<notice.a00000@example.com>", "error": None,
                                      "delivered_at": None, "message_sha256": None}
    assert ana["waves"]["confirmation"] == {"state": None, "at": None, "message_id": None, "error": None,
                                            "delivered_at": None, "message_sha256": None}
    assert ana["devices"][0]["flipped_at"] == iso(AFTER) and ana["devices"][0]["held_back"] is False
    assert ben["devices"][0]["held_back"] is True and ben["devices"][0]["held_back_why"] == "no delivered notice"
    assert ben["waves"]["notice"]["error"].startswith("550")
    assert dee["devices"][0]["held_back"] is True and dee["devices"][0]["state"] == "waiting"
    assert [d["device_id"] for d in eve["devices"]] == ["d00004", "e00004"]
    assert fay["devices"] == []


def test_rollback_shows_in_the_report(run_cli: CliRun, story: Engine, write_file: Callable[..., Path]) -> None:
    # Eve sets her hall speaker herself after the flip: the rollback leaves it.
    eve = write_file("eve.csv", "device_id,account_id,name,model,voice_recordings\n"
                                "e00004,a00004,Hall,Echo Dot (4th Gen),save_all\n")
    assert run_cli("import", "devices", str(eve)).exit_code == 0
    later = AFTER + dt.timedelta(days=1)
    flip.rollback(story, SLUG, "ops", now=later)
    rows = {r["device_id"]: r for r in rows_of(run_cli("report", SLUG).output)}
    assert rows["d00000"]["change"] == "rolled_back"
    assert (rows["d00000"]["rolled_back_at"], rows["d00000"]["flipped_at"]) == (iso(later), iso(AFTER))
    assert rows["e00004"]["change"] == "left" and "save_all" in rows["e00004"]["note"]
    assert rows["e00004"]["rolled_back_at"] == ""


def test_html_is_one_self_contained_escaped_page(run_cli: CliRun, story: Engine, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run_cli("report", SLUG, "--format", "html", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for title in ("Sends over time", "Outcomes by wave", "Outcomes by locale", "The flip", "Timeline"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("<svg") >= 1 and "@media print" in page and "cutoff" in page
    # The hostile actor is escaped wherever it shows.
    assert HOSTILE not in page and html_escaped(HOSTILE) in page
    # Nothing from elsewhere, nothing to run (the escaped actor aside, which is text).
    markup = page.replace(html_escaped(HOSTILE), "")
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|@import|url\(|https?://|\bon\w+=", markup,
                         re.IGNORECASE)
    # The numbers: 5 notices in the ledger (4 sent: one bounced); 3 devices switched, 2 held back, 1 waiting.
    with story.connect() as conn:
        data = htmlreport.html_data(conn, SLUG)
        # the one-pass summary agrees with the ledger's own counts
        assert {w["name"]: w["counts"] for w in data["waves"]} == status.status(conn, SLUG).waves
    assert data["waves"][0]["counts"]["sent"] == 4 and data["flip"]["changed"] == 3
    assert data["flip"]["held_back"] == 2 and data["flip"]["waiting"] == 1
    assert sum(s["count"] for s in data["sends"]) == 6  # sent_at on the 5 sent and the bounced one
    assert data["by_locale"]["en-US"]["notice"] == {"sent": 3}  # Ana, Dee, Fay
    assert data["by_locale"]["ja-JP"]["notice"] == {"suppressed": 1}
    # …and the same page on stdout.
    assert run_cli("report", SLUG, "--format", "html").output.startswith("<!doctype html>")


def html_escaped(s: str) -> str:
    """`s` as the page writes it: escaped by Jinja2's autoescape (markupsafe: `"` as `&#34;`, not `&quot;`)."""
    import markupsafe
    return str(markupsafe.escape(s))


def test_one_persons_story(run_cli: CliRun, story: Engine, write_file: Callable[..., Path]) -> None:
    result = run_cli("report", SLUG, "--account", "a00000")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "a00000 · Ana Told <user0@example.com> · en-US · America/New_York" in out
    # Each message with its time in their zone and its Message-ID.
    assert "2025-03-14 07:00 UTC (Fri 14 Mar 03:00 EDT their time)  <notice.a00000@example.com>" in out
    assert "<reminder.a00000@example.com>" in out
    assert "d00000 Kitchen (Echo Show 10): voice_recordings do_not_send → dont_save" in out
    assert "switched 2025-03-28 07:05 UTC (Fri 28 Mar 03:05 EDT their time)" in out
    assert "holds 'dont_save' now" in out
    assert "flip" in out.split("Audit events")[1] and "campaign.create" in out
    assert "suppress.add" not in out  # someone else's address

    # By address, normalized and in any case: the suppressed person, with the suppression that applied.
    result = run_cli("report", SLUG, "--email", " USER2@Example.COM ", "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["account"]["account_id"] == "a00002"
    assert s["messages"][0]["state"] == "suppressed" and s["messages"][0]["message_id"] is None
    assert s["suppressions"] == [{"email": "user2@example.com", "reason": "asked <not> to be mailed",
                                  "source": "manual", "at": s["suppressions"][0]["at"], "by": "tester"}]
    assert [e["action"] for e in s["events"] if e["action"].startswith("suppress")] == ["suppress.add"]
    assert s["devices"][0]["state"] == "held_back" and s["devices"][0]["held_back_why"] == "no delivered notice"
    assert s["messages"][0]["at_local"].endswith("+09:00")  # Tokyo

    # Waiting for fair notice, said with when.
    out = run_cli("report", SLUG, "--account", "a00003").output
    assert "waiting for fair notice (first notice 2025-03-26 07:00 UTC" in out and "until 2025-04-02 07:00 UTC" in out
    # Fay's device: no change row, no longer affected: nothing to show but her message.
    fay = json.loads(run_cli("report", SLUG, "--account", "a00005", "--json").output)
    assert fay["devices"] == [] and fay["messages"][0]["state"] == "sent"
    # Ana changes her address: the one the campaign mailed still finds her.
    moved = write_file("ana.csv", "account_id,email,name,locale,timezone,country\n"
                                  "a00000,ana.new@example.com,Ana Told,en-US,America/New_York,US\n")
    assert run_cli("import", "accounts", str(moved)).exit_code == 0
    ana = json.loads(run_cli("report", SLUG, "--email", "user0@example.com", "--json").output)
    assert ana["account"]["account_id"] == "a00000" and ana["account"]["email"] == "ana.new@example.com"
    assert ana["messages"][0]["email"] == "user0@example.com"


def test_story_before_the_flip_and_errors(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                          tmp_path: Path) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path))).exit_code == 0
    s = json.loads(run_cli("report", SLUG, "--account", "a00004", "--json").output)
    assert [(d["device_id"], d["state"]) for d in s["devices"]] == [("d00004", "not_yet"), ("e00004", "not_yet")]
    assert s["messages"] == []
    # Nothing yet: the reports are empty, not broken.
    assert run_cli("report", SLUG).output.count("\n") == 1
    assert run_cli("report", SLUG, "--format", "jsonl").output == ""
    assert "Nothing has been sent yet" in run_cli("report", SLUG, "--format", "html").output
    before = table_counts(engine)
    for args, message in [
        (("--account", "nobody"), "no account 'nobody'"),
        (("--email", "not an address"), "not a valid email address"),
        (("--email", "user0@example.com", "--account", "a00000"), "not both"),
        (("--json",), "--json goes with --account"),
    ]:
        result = run_cli("report", SLUG, *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert run_cli("report", "nope").exit_code == 2
    assert table_counts(engine) == before  # reports write nothing


def test_log_oldest_first_filtered(run_cli: CliRun, story: Engine) -> None:
    result = run_cli("log", SLUG, "--json")
    assert result.exit_code == 0, result.output
    events = json.loads(result.output)["events"]
    actions = [e["action"] for e in events]
    assert actions == ["import.accounts", "import.devices", "suppress.add", "campaign.create", "import.devices",
                       "flip.finished", "flip"]  # the one run went to its end: the flip finished (issue 25)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[0]["campaign"] is None and events[3]["campaign"] == SLUG
    assert events[-1]["actor"] == HOSTILE and events[-1]["detail"]["changed"] == 3
    assert [e["action"] for e in json.loads(run_cli("log", SLUG, "--json", "--actor", HOSTILE).output)["events"]] \
        == ["flip.finished", "flip"]
    # --since: the flip was recorded at the real time of the test run, after everything else.
    since = events[-1]["at"]
    assert [e["action"] for e in json.loads(run_cli("log", SLUG, "--json", "--since", since).output)["events"]][-1] \
        == "flip"
    assert json.loads(run_cli("log", SLUG, "--json", "--since", "2999-01-01").output)["events"] == []
    text = run_cli("log", SLUG).output
    assert "import.accounts" in text and "(all campaigns)" in text and "changed=3" in text
    bad = run_cli("log", SLUG, "--since", "yesterday")
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def test_report_streams_in_account_order_with_a_small_batch(story: Engine) -> None:
    """The per-account statement gives each account's rows together, whatever the fetch size."""
    from campaign.store import evidence

    with story.connect() as conn:
        cid = conn.execute(select(WAVE.c.campaign_id)).scalars().first()
        assert cid is not None
        waves = list(conn.execute(select(WAVE.c.id).order_by(WAVE.c.position)).scalars())
        at = evidence.account_columns(len(waves)).account_id
        ids = [r[at] for r in evidence.account_rows(conn, cid, waves, "held", "waiting", yield_per=2)]
    assert ids == sorted(ids) and len(ids) == 7


# Text a spreadsheet would run as a formula (OWASP "CSV Injection"), in every kind of cell that comes from data.
FORMULA_ACCOUNTS = """account_id,email,name,locale,timezone,country
=1+2,=cmd@example.com,Eq,en-US,America/New_York,US
+3-4,+x@example.com,Plus,en-US,America/New_York,US
-5+6,-y@example.com,Minus,en-US,America/New_York,US
@SUM(7),'q@example.com,At,en-US,America/New_York,US
'quoted,plain@example.com,Apostrophe,en-US,America/New_York,US
"""
FORMULA_DEVICES = """device_id,account_id,name,model,voice_recordings
=d1,=1+2,Kitchen,Echo Show 10,do_not_send
+d2,+3-4,Kitchen,Echo Show 10,do_not_send
-d3,-5+6,Kitchen,Echo Show 10,do_not_send
@d4,@SUM(7),Kitchen,Echo Show 10,do_not_send
'd5,'quoted,Kitchen,Echo Show 10,do_not_send
"""
# A relay's reply is not checked at all: a tab, a carriage return, blanks before the formula.
FORMULA_ERRORS = {"=1+2": "\t=1+1", "+3-4": "\r=2+2", "-5+6": "  =HYPERLINK(\"http://x\")", "@SUM(7)": "@x",
                  "'quoted": "-1"}


def test_csv_cells_that_could_start_a_formula_get_an_apostrophe(run_cli: CliRun, engine: Engine,
                                                                 write_file: Callable[..., Path],
                                                                 tmp_path: Path) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", FORMULA_ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", FORMULA_DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path))).exit_code == 0
    deliver(engine, [(a, "notice", "bounced", EARLY, error) for a, error in FORMULA_ERRORS.items()])
    flip.flip(engine, SLUG, "ops", now=AFTER)  # every device held back (no delivered notice): a change row each

    result = run_cli("report", SLUG, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = rows_of(result.output)
    quoted = {"=1+2": "=cmd@example.com", "+3-4": "+x@example.com", "-5+6": "-y@example.com",
              "@SUM(7)": "'q@example.com", "'quoted": "plain@example.com"}
    devices = {"=1+2": "=d1", "+3-4": "+d2", "-5+6": "-d3", "@SUM(7)": "@d4", "'quoted": "'d5"}
    assert sorted(r["account_id"] for r in rows) == sorted(f"'{a}" for a in quoted)
    for r in rows:
        account = r["account_id"][1:]
        email = quoted[account]
        assert r["email"] == (f"'{email}" if email[0] in "=+-'" else email)
        assert r["device_id"] == f"'{devices[account]}"
        assert r["notice_error"] == f"'{FORMULA_ERRORS[account]}"
        # what is not text from data is written as it is: states, times, the campaign's own words
        assert (r["notice_state"], r["notice_at"], r["change"]) == ("bounced", iso(EARLY), "held_back")
        assert (r["locale"], r["held_back"], r["held_back_why"]) == ("en-US", "true", "no delivered notice")
    # No cell of the file starts a formula, whatever a spreadsheet trims first.
    cells = [c for line in csv.reader(io.StringIO(result.output)) for c in line]
    assert [c for c in cells if c and (c[0] in "=+-@\t\r" or c.lstrip()[:1] in ("=", "+", "-", "@"))] == []
    # Every apostrophe first was put there: dropping it gives the value back (the `'quoted` account).
    assert "''quoted" in cells and "''q@example.com" in cells and "''d5" in cells

    # JSON Lines keeps the values as they are.
    lines = [json.loads(line) for line in run_cli("report", SLUG, "--format", "jsonl").output.splitlines()]
    assert sorted(x["account_id"] for x in lines) == sorted(quoted)
    for x in lines:
        assert x["email"] == quoted[x["account_id"]]
        assert [d["device_id"] for d in x["devices"]] == [devices[x["account_id"]]]
        assert x["waves"]["notice"]["error"] == FORMULA_ERRORS[x["account_id"]]
