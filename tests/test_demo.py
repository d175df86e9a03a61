"""`campaign demo`: the README's first command tells the whole story, and the story is true."""

from __future__ import annotations

import csv
import email
import os
import sqlite3
from collections import Counter
from email.policy import default
from pathlib import Path

import pytest
from click.testing import CliRunner

from campaign.cli import cli
from campaign.demo import walkthrough


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow on purpose (about 30 s): it runs the whole of `campaign demo`, every step a real command (the README's
    first command), and checks the story it tells against the database, the outbox and the files it writes."""
    monkeypatch.chdir(tmp_path)
    for var in ("CAMPAIGN_DATABASE_URL", "CAMPAIGN_SMTP_URL", "CAMPAIGN_TEMPLATES", "CAMPAIGN_CLOCK", "CAMPAIGN_ACTOR",
                "CAMPAIGN_BOUNCE_KEY", "CAMPAIGN_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for step in ("schedule voice-local-processing --dry-run", "scheduler run --once", "rollback voice-local-processing "
                 "--dry-run", "Where to look"):
        assert step in out
    # The messages, as the recipients got them: each person at most once per wave.
    waves: Counter[tuple[str, str]] = Counter()
    for f in (work / "outbox" / "new").iterdir():
        msg = email.message_from_bytes(f.read_bytes(), policy=default)
        if msg["X-Campaign-Test"]:
            continue
        waves[(str(msg["X-Campaign-Wave"]), str(msg["To"]))] += 1
    assert waves and max(waves.values()) == 1
    told = {w for w, _ in waves}
    assert told == {"notice", "reminder", "confirmation"}
    db = sqlite3.connect(work / "campaign.db")

    def one(sql: str) -> tuple[object, ...]:
        return tuple(db.execute(sql).fetchone())

    # Megan asked not to be emailed: suppressed, never notified, her device held back.
    assert one("SELECT state FROM delivery WHERE account_id = 'acc-000016' AND wave_id = "
               "(SELECT id FROM wave WHERE name = 'notice')") == ("suppressed",)
    assert one("SELECT state FROM setting_change WHERE account_id = 'acc-000016'") == ("held_back",)
    # Joseph chose another setting himself: no reminder, no switch.
    assert db.execute("SELECT COUNT(*) FROM delivery d JOIN wave w ON w.id = d.wave_id "
                      "WHERE d.account_id = 'acc-000003' AND w.name = 'reminder'").fetchone() == (0,)
    assert one("SELECT value FROM device_setting WHERE device_id = 'dev-0000004'") == ("save_recordings",)
    assert db.execute("SELECT COUNT(*) FROM setting_change WHERE device_id = 'dev-0000004'").fetchone() == (0,)
    # Priya was told five days before the cutoff: switched seven days after her notice, and confirmed.
    notice_at, flipped_at = one(
        "SELECT d.sent_at, c.flipped_at FROM delivery d JOIN wave w ON w.id = d.wave_id "
        "JOIN setting_change c ON c.account_id = d.account_id WHERE d.account_id = 'acc-900001' AND w.name = 'notice'")
    import datetime as dt
    gap = dt.datetime.fromisoformat(str(flipped_at)) - dt.datetime.fromisoformat(str(notice_at))
    assert dt.timedelta(days=7) <= gap < dt.timedelta(days=7, hours=2)
    assert one("SELECT d.state FROM delivery d JOIN wave w ON w.id = d.wave_id "
               "WHERE d.account_id = 'acc-900001' AND w.name = 'confirmation'") == ("sent",)
    # Barbara changed her switched device afterwards: the rollback dry run leaves her alone, and wrote nothing.
    assert "dev-0000018" in out.split("rollback voice-local-processing --dry-run")[1]
    assert one("SELECT state FROM setting_change WHERE device_id = 'dev-0000018'") == ("changed",)
    assert db.execute("SELECT COUNT(*) FROM setting_change WHERE state = 'rolled_back'").fetchone() == (0,)
    # Every wave ended settled, and the campaign is done once the scheduler saw its last step run (issue 23).
    assert db.execute("SELECT COUNT(*) FROM delivery WHERE state IN ('pending', 'sending')").fetchone() == (0,)
    assert one("SELECT state FROM campaign") == ("done",)
    assert "voice-local-processing: done, cutoff" in out.split("Where the campaign stands")[-1]
    assert "voice-local-processing: scheduled, cutoff" in out.split("Where the campaign stands")[-2]
    assert db.execute("SELECT COUNT(*) FROM audit_event WHERE action = 'campaign.done'").fetchone() == (1,)
    # The preflight caught the draft's missing Japanese reminder before `create`; the story ends on the answer to
    # "was everyone told in time?" (issue 23).
    draft = out.split("$ campaign check ")[1].split("== ")[0]
    assert "error [missing-translation]: wave `reminder`: ja-JP is a required locale" in draft
    assert "1 error(s)" in draft and "created campaign" not in draft
    ending = out.split("How it ended")[1]
    assert "voice-local-processing: done, cutoff" in ending
    assert "242 of 244 (99 %) affected accounts before the cutoff, 241 in time" in ending
    # It ends by saying how to open the console on its database (issue 24).
    assert f"campaign --database-url sqlite:///{work / 'campaign.db'} serve --identity demo" in out.splitlines()[-2]
    # The gallery is there.
    assert (work / "gallery" / "index.html").is_file()
    # The story ends with the evidence: Priya's story in her zone, every account in the CSV, the HTML report.
    assert "report voice-local-processing --account acc-900001" in out and "CDT their time" in out
    with (work / "report.csv").open(encoding="utf-8", newline="") as f:
        rows = {r["device_id"]: r for r in csv.DictReader(f)}
    assert rows["dev-0000018"]["change"] == "changed" and rows["dev-9000001"]["change"] == "changed"
    assert "dev-0000004" not in rows  # Joseph chose himself: no change row
    rows_by_account = {r["account_id"]: r for r in rows.values()}
    megan = rows_by_account["acc-000016"]
    assert (megan["notice_state"], megan["held_back"], megan["held_back_why"]) == \
        ("suppressed", "true", "no delivered notice")
    page = (work / "report.html").read_text(encoding="utf-8")
    assert "<h2>Sends over time</h2>" in page and "<svg" in page and "The cutoff" in page
    assert f"the campaign report, for a browser:        {work / 'report.html'}" in out


    # No one flips alone: the author's `schedule` is refused, dana approves, then it goes through.
    refused, _, after = out.partition("$ campaign schedule voice-local-processing\n")[2].partition(
        "$ campaign --actor dana approve voice-local-processing\n")
    assert "needs an approval before its schedule" in refused and "scheduled voice-local-processing" not in refused
    assert after.startswith("voice-local-processing: approved by dana")
    assert "$ campaign schedule voice-local-processing\nscheduled voice-local-processing" in after
    assert "approval       approved by dana at 2025-03-08T09:00:00+00:00" in out  # status shows it
    events = db.execute("SELECT id, at, actor, action FROM audit_event WHERE action IN "
                        "('campaign.create', 'campaign.approve', 'campaign.schedule') ORDER BY id").fetchall()
    assert [(actor, action) for _, _, actor, action in events] == [
        ("demo", "campaign.create"), ("dana", "campaign.approve"), ("demo", "campaign.schedule")]
    assert "dana       campaign.approve" in out.split("$ campaign log voice-local-processing")[1]
    # The log reads in the order things happened: insertion order and time agree.
    rows = db.execute("SELECT at FROM audit_event ORDER BY id").fetchall()
    assert rows == sorted(rows)

    # A late bounce: Hannah's notice was sent, a relay returned it the next day to its signed return path; the
    # import makes the delivery `bounced`, suppresses her address, the reminder skips her and her device is held
    # back at the cutoff (require_notice), which her one-account story shows.
    assert one("SELECT kind, outcome, matched_by, status, email FROM bounce") == (
        "bounce", "applied", "token", "5.1.1", "hannah_wagner18@example.com")
    assert one("SELECT d.state FROM delivery d JOIN wave w ON w.id = d.wave_id "
               "WHERE d.account_id = 'acc-000018' AND w.name = 'notice'") == ("bounced",)
    assert one("SELECT source FROM suppression WHERE email = 'hannah_wagner18@example.com'") == ("bounce",)
    assert one("SELECT d.state FROM delivery d JOIN wave w ON w.id = d.wave_id "
               "WHERE d.account_id = 'acc-000018' AND w.name = 'reminder'") == ("suppressed",)
    assert ("reminder", "Hannah Wagner <hannah_wagner18@example.com>") not in waves
    assert ("notice", "Hannah Wagner <hannah_wagner18@example.com>") in waves  # it had gone out
    assert one("SELECT state, note FROM setting_change WHERE device_id = 'dev-0000026'")[0] == "held_back"
    assert one("SELECT value FROM device_setting WHERE device_id = 'dev-0000026'") == ("do_not_send",)
    assert (rows_h := rows_by_account["acc-000018"])["notice_state"] == "bounced" and rows_h["held_back"] == "true"
    story = out.split("$ campaign report voice-local-processing --account acc-000018")[1].split("\n== ")[0]
    assert "notice        bounced" in story and "reminder      suppressed" in story
    assert "held back (no delivered notice)" in story
    # The demo's bounce key is for the demo's own steps: labelled, never printed, not left behind.
    assert "CAMPAIGN_BOUNCE_KEY and CAMPAIGN_WEBHOOK_SECRET are fixed demo keys" in out
    assert walkthrough.DEMO_BOUNCE_KEY not in out and "CAMPAIGN_BOUNCE_KEY" not in os.environ
    assert walkthrough.DEMO_WEBHOOK_SECRET not in out and "CAMPAIGN_WEBHOOK_SECRET" not in os.environ

    # Issue 25: the flip in two stages, the second an hour after the first, each with its change rows.
    first = out.split("Where the campaign stands")[2].split("\n== ")[0]  # 35 minutes after the cutoff
    assert "stages         10%: finished" in first and "100%: not begun" in first and "next step      flip:2" in first
    stages = dict(db.execute("SELECT stage, COUNT(*) FROM setting_change GROUP BY stage").fetchall())
    assert set(stages) == {1, 2} and 0 < stages[1] < stages[2]
    assert "100%: finished" in ending
    # The campaign's events, signed, to the receiver on loopback; the log says each was delivered.
    accepted = next(line for line in out.splitlines() if line.startswith("The receiver on http://127.0.0.1:"))
    for kind in ("approval.needed ×1", "approval.given ×1", "flip.stage_finished ×2", "flip.finished ×1",
                 "campaign.done ×1", "wave.finished"):
        assert kind in accepted
    log = out.split("$ campaign webhooks log")[1].split("\n== ")[0]
    assert "campaign.done" in log and "failed" not in log and log.count("delivered") == int(
        accepted.split(" accepted ")[1].split()[0])
    # Priya's notice, rebuilt from the kept version: byte for byte the message in the outbox.
    proof = out.split("--message notice --eml")[1].split("\n== ")[0]
    assert "PROVEN: the rebuilt message is byte-identical" in proof
    rebuilt = (work / "priya-notice.eml").read_bytes()
    mailed = [f.read_bytes() for f in (work / "outbox" / "new").iterdir()
              if b"priya.shah@example.com" in f.read_bytes() and b"X-Campaign-Wave: notice" in f.read_bytes()]
    assert len(mailed) == 1 and mailed[0] == rebuilt
