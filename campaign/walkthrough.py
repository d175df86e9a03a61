"""A walk through the shipped example on the embedded defaults (SQLite, Maildir): schema, import,
create, audience. `./run demo` runs it; each step is a real `campaign` command, shown as it runs."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("dir", nargs="?", default="demo-run", help="working directory (default: demo-run)")
    args = parser.parse_args(argv)
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_file = work / "campaign.db"
    for stale in (db_file, work / "campaign.db-wal", work / "campaign.db-shm"):
        stale.unlink(missing_ok=True)
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{db_file}",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_SMTP_URL": f"maildir:{work / 'outbox'}",
           "CAMPAIGN_ACTOR": os.environ.get("CAMPAIGN_ACTOR", "demo")}
    steps = [
        ("Create the schema (SQLite, in the working directory)", ["db", "upgrade"]),
        ("Import the sample accounts (500, several locales and time zones)",
         ["import", "accounts", str(DATA / "accounts.csv")]),
        ("Import their devices and settings", ["import", "devices", str(DATA / "devices.csv")]),
        ("Register the campaign: retire 'Do not send voice recordings'",
         ["create", str(DATA / "voice-local-processing.toml")]),
        ("Who is affected now, by locale", ["audience", "voice-local-processing", "--by", "locale"]),
        ("... by device model", ["audience", "voice-local-processing", "--by", "model"]),
        ("A few of them", ["audience", "voice-local-processing", "--sample", "5"]),
        ("The reminder as a Japanese customer gets it", ["preview", "voice-local-processing", "--wave", "reminder",
                                                         "--locale", "ja-JP"]),
        ("Every wave × locale as .eml and .html, with a gallery to open in a browser",
         ["preview", "voice-local-processing", "--out", str(work / "gallery")]),
        ("Test messages to the team (into the Maildir outbox: nothing leaves this machine)",
         ["test-send", "voice-local-processing", "--to", "qa@example.com", "--wave", "notice"]),
        ("The campaigns", ["list"]),
    ]
    print(f"Working in {work}\n")
    for title, cmd in steps:
        print(f"== {title}\n$ campaign {shlex.join(cmd)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "campaign", *cmd], env=env, cwd=work, check=False)
        if done.returncode != 0:
            print(f"step failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
        print()
    print(f"Gallery: {work / 'gallery' / 'index.html'}   Test messages: {work / 'outbox' / 'new'}")
    print(f"Done. The database is {db_file}; look around with:\n  CAMPAIGN_DATABASE_URL=sqlite:///{db_file} "
          ".venv/bin/campaign audience voice-local-processing --by country")
    return 0


if __name__ == "__main__":
    sys.exit(main())
