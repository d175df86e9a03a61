"""Console benchmark: how long the pages take with a million accounts in the database. `campaign serve` runs as a
whole process on a free loopback port over a SQLite database prepared as bench/report.py prepares its own (the
shipped campaign, N accounts, three waves sent to all of them, the flip done: a ledger of 3 N deliveries and
about 1.2 N change rows); then GET / and GET /campaigns/{slug} are each timed K times after one warm-up, and the
medians printed against the goal (200 ms), with the warm-up's own time: the first reading of a page's figures
(the core's aggregates over the ledger), which the console then keeps for 15 seconds (`context.Snapshots`).
GET /api/campaigns/{slug}, `status --json` read at every request, is timed beside them. The console runs in demo
mode (a persona cookie: the JWT check is a fraction of a millisecond and not what is measured).

    ./run bench console [--accounts N] [--runs K] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, SLUG, prepare  # bench/report.py: the million-account campaign, set-based

GOAL_MS = 200.0
PAGES = ("/", f"/campaigns/{SLUG}", f"/api/campaigns/{SLUG}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--work", type=Path, help="keep the prepared database here and reuse it next time")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-console-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"console-{args.accounts}.db"
    if not db.exists():
        t = time.monotonic()
        prepare(db, args.accounts)
        print(f"prepared {args.accounts:,} accounts in {time.monotonic() - t:.0f} s: {db}", flush=True)
    port = free_port()
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{db}", "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    server = subprocess.Popen([sys.executable, "-m", "campaign", "serve", "--identity", "demo", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the console did not start")
                time.sleep(0.2)
            client.cookies.set("campaign_demo_persona", "viewer")
            print(f"{args.accounts:,} accounts; median of {args.runs} after one warm-up; goal {GOAL_MS:.0f} ms")
            for path in PAGES:
                t = time.perf_counter()
                if client.get(path).status_code != 200:
                    raise SystemExit(f"GET {path} failed")
                first = (time.perf_counter() - t) * 1000
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    response = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    assert response.status_code == 200
                median = statistics.median(times)
                verdict = "ok" if median <= GOAL_MS else "SLOWER than the goal"
                print(f"  GET {path:<36} {median:8.1f} ms  (min {min(times):.1f}, max {max(times):.1f}; first "
                      f"{first:,.0f} ms)  {verdict}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
