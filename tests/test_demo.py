"""`campaign demo`: the README's first command tells the whole story, and the story is true."""

from __future__ import annotations

import csv
import email
import sqlite3
from collections import Counter
from email.policy import default
from pathlib import Path

import pytest
from click.testing import CliRunner

from campaign.cli import cli


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CAMPAIGN_DATABASE_URL", "CAMPAIGN_SMTP_URL", "CAMPAIGN_TEMPLATES", "CAMPAIGN_CLOCK"):
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
    # Every wave ended settled.
    assert db.execute("SELECT COUNT(*) FROM delivery WHERE state IN ('pending', 'sending')").fetchone() == (0,)
    # The gallery is there.
    assert (work / "gallery" / "index.html").is_file()
    # The story ends with the evidence: Priya's story in her zone, every account in the CSV, the HTML report.
    assert "report voice-local-processing --account acc-900001" in out and "CDT their time" in out
    with (work / "report.csv").open(encoding="utf-8", newline="") as f:
        rows = {r["device_id"]: r for r in csv.DictReader(f)}
    assert rows["dev-0000018"]["change"] == "changed" and rows["dev-9000001"]["change"] == "changed"
    assert "dev-0000004" not in rows  # Joseph chose himself: no change row
    megan = next(r for r in rows.values() if r["account_id"] == "acc-000016")
    assert (megan["notice_state"], megan["held_back"], megan["held_back_why"]) == \
        ("suppressed", "true", "no delivered notice")
    page = (work / "report.html").read_text(encoding="utf-8")
    assert "<h2>Sends over time</h2>" in page and "<svg" in page and "The cutoff" in page
    assert f"the campaign report, for a browser:        {work / 'report.html'}" in out
