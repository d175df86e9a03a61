"""Bounce import benchmark: `campaign bounces import MAILDIR` of N returned messages, against reading and parsing
the same files with the email package alone, measured in the same run.

Prepared once: a SQLite database with N sample accounts, the shipped campaign with `[bounces] return_path`, its
notice sent to a Maildir (the real send path, so the ledger holds the real Message-IDs), and a Maildir of N
returned messages made from those notices in the tests' relay styles, in turn: Postfix, Exim, Exchange Online,
Google, qmail, an ARF complaint and a Postfix delay — each addressed to the notice's signed return path.

Each run copies the prepared database and times, in this process, `bounces.import_path` (read, parse, match,
write: deliveries bounced, addresses suppressed, a `bounce` row each, in chunks of 500 per transaction) and the
reference (each file read and given to `email.message_from_bytes`), alternately; medians of the runs, messages
per second and the ratio ours/reference.

    ./run bench bounces [--messages N] [--runs K] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import mailbox
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from email import policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' returned-mail makers

from tests import bounce_mail as bm  # noqa: E402

SLUG = "voice-local-processing"
KEY = "bench-bounce-key-0123456789abcdef0123456789"


def cli(url: str, *args: str) -> None:
    start = time.perf_counter()
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_BOUNCE_KEY": KEY}
    env.pop("CAMPAIGN_CLOCK", None)
    result = subprocess.run([sys.executable, "-m", "campaign", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    print(f"  campaign {args[0]} {args[1] if len(args) > 1 else ''}: {time.perf_counter() - start:.1f} s")


def prepare(work: Path, n: int) -> tuple[Path, Path]:
    """The database after the notice went out, and the Maildir of returned mail."""
    db_path = work / "prepared.db"
    url = f"sqlite:///{db_path}"
    (work / "accounts.csv").write_text("account_id,email,name,locale,timezone,country\n" + "".join(
        f"a{i:07d},user{i}@example.net,User {i},en-US,America/New_York,US\n" for i in range(n)), encoding="utf-8")
    (work / "devices.csv").write_text("device_id,account_id,name,model,voice_recordings\n" + "".join(
        f"d{i:07d},a{i:07d},Room {i},Echo Show 10,do_not_send\n" for i in range(n)), encoding="utf-8")
    cutoff = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0).isoformat()
    text = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text = text.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    start, end = text.index("[limits]"), text.index("[context]")
    text = (text[:start] + "[limits]\nrate_per_second = 100000\nconcurrency = 16\n\n"
            '[bounces]\nreturn_path = "bounces@example.com"\n\n' + text[end:])
    (work / "def.toml").write_text(text, encoding="utf-8")
    cli(url, "db", "upgrade")
    cli(url, "import", "accounts", str(work / "accounts.csv"))
    cli(url, "import", "devices", str(work / "devices.csv"))
    cli(url, "create", str(work / "def.toml"))
    outbox = work / "outbox"
    os.environ["CAMPAIGN_BOUNCE_KEY"] = KEY
    env_url = {"CAMPAIGN_SMTP_URL": f"maildir:{outbox}"}
    os.environ.update(env_url)
    cli(url, "send", SLUG, "--wave", "notice", "--ignore-window")

    from campaign import verp
    from campaign.definition import parse_definition

    d = parse_definition(text)
    makers = [bm.postfix, bm.exim, bm.exchange, bm.google, bm.qmail, bm.arf,
              lambda s: bm.postfix(s, status="4.4.1", action="delayed")]
    returned = mailbox.Maildir(work / "returned", create=True)
    for i, (_key, msg) in enumerate(mailbox.Maildir(outbox, create=False).iteritems()):
        data = msg.as_bytes()
        mid = str(msg["Message-ID"])
        sent = bm.Sent(verp.envelope_sender(d, mid, d.sender_address), str(msg["To"]).split("<")[-1].rstrip(">"),
                       data)
        returned.add(makers[i % len(makers)](sent))
    returned.close()
    return db_path, work / "returned"


def ours(db_path: Path, box: Path, work: Path) -> tuple[float, int]:
    from campaign.db import make_engine
    from campaign.returns import bounces

    run_db = work / "run.db"
    shutil.copyfile(db_path, run_db)
    engine = make_engine(f"sqlite:///{run_db}")
    try:
        start = time.perf_counter()
        result = bounces.import_path(engine, box, "bench")
        elapsed = time.perf_counter() - start
    finally:
        engine.dispose()
    if result.already or result.outcomes["unmatched"] or result.outcomes["forged"]:
        raise SystemExit(f"unexpected result: {result.outcomes}, already {result.already}")
    return elapsed, result.new


def reference(box: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for sub in ("new", "cur"):
        for name in sorted(os.listdir(box / sub)):
            email.message_from_bytes((box / sub / name).read_bytes(), policy=policy.compat32)
            n += 1
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="returned messages (default 5000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaign-bench-bounces-"))
    try:
        t0 = time.perf_counter()
        db_path, box = prepare(work, args.messages)
        print(f"prepared {args.messages} returned messages in {time.perf_counter() - t0:.1f} s ({work})")
        mine, refs = [], []
        for run in range(args.runs):
            secs, n = ours(db_path, box, work)
            mine.append(n / secs)
            rsecs, rn = reference(box)
            refs.append(rn / rsecs)
            print(f"run {run + 1}: ours {n / secs:,.0f} msg/s, reference {rn / rsecs:,.0f} msg/s")
        m, r = statistics.median(mine), statistics.median(refs)
        print(f"bounce import (SQLite): {m:,.0f} messages/s; email package alone: {r:,.0f} messages/s; "
              f"ratio ours/reference {m / r:.2f} (median of {args.runs})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
