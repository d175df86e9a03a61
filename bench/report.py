"""Report benchmark: `campaign report SLUG --format csv` of 1,000,000 accounts (three waves sent, the flip done), as
a whole process, against one bare SQL query exporting the same columns through Python's `csv` writer, measured in
the same run; and the HTML report of the same campaign, timed.

The campaign is the shipped one, created with `campaign create` over accounts and devices that this script writes
set-based in SQL (a recursive CTE), and so are its ledger (three waves: every account told, 1 in 100 notices
bounced) and its change rows (each device switched at the cutoff, those of a bounced account held back): nothing
is sent or flipped for real. The reference is the same statement as ours — the campaign's accounts, each joined to
its delivery of each wave by the ledger's unique index and to its change rows, in account order — through the
bare `sqlite3` module, writing each row as it comes (no formatting of times, no held-back wording). Both write to
a file on the same disk; they alternate, and the medians of the runs are compared as rows per second. Our peak
RSS is the command's own (wait4).

    ./run bench report [--accounts N] [--runs K] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLUG = "voice-local-processing"
WAVES = ("notice", "reminder", "confirmation")
LOCALES = (("en-US", "America/New_York", "US"), ("de-DE", "Europe/Berlin", "DE"), ("ja-JP", "Asia/Tokyo", "JP"),
           ("es-US", "America/Los_Angeles", "US"), ("en-GB", "Europe/London", "GB"),
           ("de-AT", "Europe/Vienna", "AT"), ("en-CA", "America/Toronto", "CA"), ("fr-CA", "America/Montreal", "CA"))
# the shipped cutoff, 2025-03-28T07:00Z; the waves at -14 d, -3 d and +2 h, each spread over ten hours
SENT = {"notice": "2025-03-14 07:00:00", "reminder": "2025-03-25 07:00:00", "confirmation": "2025-03-28 09:00:00"}
FLIPPED = "2025-03-28 07:30:00.000000"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    result = subprocess.run([sys.executable, "-m", "campaign", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def _ts(expr: str) -> str:
    """A stored SQLite timestamp (naive UTC, microseconds), as `campaign` writes them."""
    return f"strftime('%Y-%m-%d %H:%M:%S', {expr}) || '.000000'"


def prepare(path: Path, n: int) -> None:
    """The schema, N accounts (a device each, a second for one in five), the campaign, its ledger and changes."""
    url = f"sqlite:///{path}"
    cli(url, "db", "upgrade")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    now = _ts("'2025-03-01 00:00:00'")
    locales = " ".join(f"WHEN {i} THEN '{loc}'" for i, (loc, _, _) in enumerate(LOCALES))
    zones = " ".join(f"WHEN {i} THEN '{tz}'" for i, (_, tz, _) in enumerate(LOCALES))
    countries = " ".join(f"WHEN {i} THEN '{c}'" for i, (_, _, c) in enumerate(LOCALES))
    k = len(LOCALES)
    db.execute("BEGIN")
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
        INSERT INTO account (id, email, name, locale, timezone, country, created_at, updated_at)
        SELECT printf('acc-%07d', i), printf('user%d@example.com', i), printf('User %d', i),
               CASE i % {k} {locales} END, CASE i % {k} {zones} END, CASE i % {k} {countries} END, {now}, {now}
        FROM n""")
    db.execute(f"""
        INSERT INTO device (id, account_id, name, model, created_at, updated_at)
        SELECT printf('dev-%07d', substr(id, 5) + 0), id, 'Kitchen', 'Echo Show 10', {now}, {now} FROM account
        UNION ALL
        SELECT printf('dev-%07d-2', substr(id, 5) + 0), id, 'Hall', 'Echo Dot (4th Gen)', {now}, {now}
        FROM account WHERE (substr(id, 5) + 0) % 5 = 0""")
    db.execute(f"""
        INSERT INTO device_setting (device_id, key, value, changed_at)
        SELECT id, 'voice_recordings', 'do_not_send', {now} FROM device""")
    db.execute("COMMIT")
    db.close()
    definition = path.parent / "def.toml"
    shutil.copyfile(ROOT / "data" / "voice-local-processing.toml", definition)
    cli(url, "create", str(definition))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    campaign_id = db.execute("SELECT id FROM campaign WHERE slug = ?", (SLUG,)).fetchone()[0]
    for wave, at in SENT.items():
        wave_id = db.execute("SELECT id FROM wave WHERE campaign_id = ? AND name = ?",
                             (campaign_id, wave)).fetchone()[0]
        bounced = "(substr(a.id, 5) + 0) % 100 = 0"
        if wave == "confirmation":  # to those changed: not the held-back ones
            where = f"WHERE NOT ({bounced})"
            state, err = "'sent'", "NULL"
        else:
            where = ""
            state = f"CASE WHEN {bounced} THEN 'bounced' ELSE 'sent' END"
            err = f"CASE WHEN {bounced} THEN '550 5.1.1 <' || a.email || '>: Recipient address rejected' END"
        sent = _ts(f"'{at}', '+' || ((substr(a.id, 5) + 0) % 36000) || ' seconds'")
        db.execute(f"""
            INSERT INTO delivery (campaign_id, wave_id, account_id, state, email, locale, attempts, expires_at,
                                  message_id, sent_at, last_error, updated_at)
            SELECT {campaign_id}, {wave_id}, a.id, {state}, a.email, a.locale, 1, '2025-04-04 09:00:00.000000',
                   '<' || lower(hex(randomblob(16))) || '.{wave}.{SLUG}@example.com>', {sent}, {err}, {sent}
            FROM account a {where} ORDER BY a.id""")
    notice = db.execute("SELECT id FROM wave WHERE campaign_id = ? AND name = 'notice'", (campaign_id,)).fetchone()[0]
    db.execute(f"""
        INSERT INTO setting_change (campaign_id, device_id, account_id, setting, from_value, to_value, state, actor,
                                    decided_at, notice_at, flipped_at, note)
        SELECT {campaign_id}, d.id, d.account_id, 'voice_recordings', 'do_not_send', 'dont_save',
               CASE WHEN dl.state = 'sent' THEN 'changed' ELSE 'held_back' END, 'bench', '{FLIPPED}',
               CASE WHEN dl.state = 'sent' THEN dl.sent_at END,
               CASE WHEN dl.state = 'sent' THEN '{FLIPPED}' END,
               CASE WHEN dl.state = 'sent' THEN NULL ELSE 'no delivered notice (require_notice)' END
        FROM device d JOIN delivery dl ON dl.account_id = d.account_id AND dl.wave_id = {notice}
        ORDER BY d.id""")
    db.execute(f"""
        UPDATE device_setting SET value = 'dont_save', changed_at = '{FLIPPED}',
               change_id = (SELECT c.id FROM setting_change c WHERE c.campaign_id = {campaign_id}
                            AND c.device_id = device_setting.device_id)
        WHERE device_id IN (SELECT device_id FROM setting_change WHERE state = 'changed')""")
    db.execute("UPDATE wave SET state = 'done'")
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


# -- the reference ---------------------------------------------------------------------------------------

def reference(path: Path, out: Path) -> int:
    """The bare query and `csv.writer`: the same rows and columns as ours, raw values; returns the rows."""
    db = sqlite3.connect(path)
    campaign_id = db.execute("SELECT id FROM campaign WHERE slug = ?", (SLUG,)).fetchone()[0]
    waves = db.execute("SELECT id, name FROM wave WHERE campaign_id = ? ORDER BY position", (campaign_id,)).fetchall()
    cols, joins = ["a.id", "a.email", "a.locale", "a.timezone"], []
    for i, (wave_id, _) in enumerate(waves):
        w = f"w{i}"
        cols += [f"{w}.state",
                 f"CASE WHEN {w}.state = 'sent' THEN {w}.sent_at WHEN {w}.state IN ('failed', 'bounced', "
                 f"'suppressed', 'skipped', 'expired') THEN {w}.updated_at END", f"{w}.message_id", f"{w}.last_error"]
        joins.append(f"LEFT JOIN delivery {w} ON {w}.campaign_id = {campaign_id} AND {w}.wave_id = {wave_id} "
                     f"AND {w}.account_id = a.id")
    cols += ["c.device_id", "c.from_value", "c.to_value", "c.state", "c.flipped_at", "c.rolled_back_at", "c.due_at",
             "c.note"]
    sql = (f"SELECT {', '.join(cols)} FROM (SELECT account_id FROM delivery WHERE campaign_id = {campaign_id} "
           f"UNION SELECT account_id FROM setting_change WHERE campaign_id = {campaign_id}) ids "
           f"JOIN account a ON a.id = ids.account_id {' '.join(joins)} "
           f"LEFT JOIN setting_change c ON c.campaign_id = {campaign_id} AND c.account_id = a.id "
           "ORDER BY ids.account_id, c.device_id")
    rows = 0
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*("account_id", "email", "locale", "timezone"),
                         *(f"{name}_{c}" for _, name in waves for c in ("state", "at", "message_id", "error")),
                         "device_id", "from", "to", "change", "flipped_at", "rolled_back_at", "due_at", "note"])
        for row in db.execute(sql):
            writer.writerow(row)
            rows += 1
    db.close()
    return rows


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run a process; (seconds, its peak RSS in KiB, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}{err}")
    return elapsed, usage.ru_maxrss, out


def lines(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the prepared database here and reuse it next time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--reference", nargs=2, metavar=("DB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        print(reference(Path(args.reference[0]), Path(args.reference[1])))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="campaign-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"report-{args.accounts}.db"
    if not db.exists():
        print(f"preparing {args.accounts:,} accounts in {db} ...", flush=True)
        start = time.perf_counter()
        prepare(db, args.accounts)
        print(f"  prepared in {time.perf_counter() - start:.0f} s", flush=True)
    url = f"sqlite:///{db}"
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench"}
    env.pop("CAMPAIGN_CLOCK", None)
    ours_csv, ref_csv, html = work / "ours.csv", work / "reference.csv", work / "report.html"

    ours_s, ref_s, rss = [], [], []
    rows = 0
    for run in range(args.runs):
        t, peak, _ = timed([sys.executable, "-m", "campaign", "report", SLUG, "--format", "csv", "--out",
                            str(ours_csv)], env)
        ours_s.append(t)
        rss.append(peak)
        t_ref, _, out = timed([sys.executable, __file__, "--reference", str(db), str(ref_csv)], env)
        ref_s.append(t_ref)
        rows = int(out.strip())
        print(f"  run {run + 1}: ours {t:.1f} s (peak RSS {peak / 1024:.0f} MiB), reference {t_ref:.1f} s", flush=True)
    ours_rows = lines(ours_csv)
    if ours_rows != rows:
        raise SystemExit(f"row counts differ: ours {ours_rows}, reference {rows}")
    html_s = []
    for _ in range(args.runs):
        t, peak, _ = timed([sys.executable, "-m", "campaign", "report", SLUG, "--format", "html", "--out",
                            str(html)], env)
        html_s.append(t)
    ours, ref = statistics.median(ours_s), statistics.median(ref_s)
    print(f"\nreport of {args.accounts:,} accounts ({rows:,} rows: a row per account and device), SQLite, "
          f"medians of {args.runs}")
    print(f"  ours      campaign report --format csv  {ours:6.1f} s  {rows / ours:>9,.0f} rows/s  "
          f"peak RSS {max(rss) / 1024:.0f} MiB")
    print(f"  reference bare SQL + csv.writer         {ref:6.1f} s  {rows / ref:>9,.0f} rows/s")
    print(f"  ratio ours/reference (rows/s): {ref / ours:.2f}   (goal >= 0.5; peak RSS goal <= 200 MiB)")
    print(f"  HTML report: {statistics.median(html_s):.1f} s (goal <= 60 s), {html.stat().st_size / 1024:.0f} KiB, "
          f"peak RSS {peak / 1024:.0f} MiB")
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif args.keep:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
