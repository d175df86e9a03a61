"""Schedule benchmark (issue 26): `campaign schedule` of N generated accounts as a whole process — every wave
rendered and built for every recipient (G5), on every core — on SQLite and on a PostgreSQL server of its own
(fsync and synchronous_commit on), against a reference measured in the same run, interleaved.

The reference is what one core does with nothing else: one process that reads the same rows with one bare SQL
select through the DBAPI (sqlite3 or psycopg; the audience's joins and filters, in account order) and renders and
builds each wave for each recipient in a plain loop with campaign's own Renderer and MessageBuilder (so a faster
renderer speeds both sides alike). `--base DIR` adds a third side: the same command from another checkout's
`campaign` package (e.g. `git archive main campaign | tar -x -C DIR`), the before of a change, in the same run.

Each side is a whole process, timed from its start to its exit, with its peak RSS: the largest VmHWM of the
process and of the processes it started, sampled every 50 ms (bench/million.py's `run_step`). Between two runs
`campaign unschedule` takes the campaign back to draft. Prints each run, then the medians, messages/s, the
per-message cost (CPU-seconds are what a million multiplies), and the time projected for the 1,357,791 messages
of a million sample accounts (linear: the audience is read once, streamed; rendering is per message).

    ./run bench schedule [--accounts N] [--runs K] [--jobs J] [--only sqlite|postgres] [--base DIR]
                         [--data DIR] [--keep]

Run it under the shared lock (`flock /tmp/campaign-bench.lock ./run bench schedule ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flip import Server  # bench/flip.py: a PostgreSQL server of the bench's own, fsync on
from million import CAMPAIGN, definition, run_step  # the shipped definition adjusted; a step's time and RSS

ROOT = Path(__file__).resolve().parent.parent
SLUG = "voice-local-processing"
SHARES = 8  # the shares of `schedule --jobs 2` (everyone.SHARES_PER_JOB per process)
MILLION_MESSAGES = 1_357_791  # 3 waves × 452,597 recipients of 1,000,000 sample accounts (docs/scale.md)
BASE_RUNNER = ("import runpy, sys\n"
               "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
               "sys.path.insert(0, sys.argv.pop(1))\n"
               "runpy.run_module('campaign', run_name='__main__')\n")


def env_for(url: str) -> dict[str, str]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    return env


def cli(url: str, *args: str) -> str:
    result = subprocess.run([*CAMPAIGN, *args], env=env_for(url), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare(url: str, data: Path, work: Path) -> None:
    """Schema, the sample accounts and devices (`campaign import` as processes), the campaign."""
    cli(url, "db", "upgrade")
    cli(url, "import", "accounts", str(data / "accounts.csv"))
    cli(url, "import", "devices", str(data / "devices.csv"))
    cli(url, "create", str(definition(work)))


# -- the reference: one process, bare SQL, the same renders and builds in a plain loop ----------------------

def reference_main(url: str) -> None:
    """Run as `python bench/schedule.py --reference URL`: prints {"messages": N}."""
    import datetime as dt

    from campaign import campaigns, db
    from campaign.notices.mime import Parts, message_id
    from campaign.notices.proofs import builder_for
    from campaign.notices.rendering import Renderer
    from campaign.recipients import DeviceView, Recipient

    engine = db.make_engine(url)  # only to read the campaign's definition, before the timed work's bulk
    with db.read(engine) as conn:
        d = campaigns.get(conn, SLUG).definition
    engine.dispose()
    renderer = Renderer(d, ROOT / "templates")
    waves = list(d.waves)
    builders = [builder_for(d, w) for w in waves]
    mark = "?" if url.startswith("sqlite") else "%s"
    countries = ", ".join(mark for _ in d.countries)
    models = ", ".join(mark for _ in d.device_models)
    sql = ("SELECT a.id, a.email, a.name, a.locale, a.timezone, d.id, d.name, d.model FROM device_setting s "
           "JOIN device d ON d.id = s.device_id JOIN account a ON a.id = d.account_id "
           f"WHERE s.key = {mark} AND s.value = {mark}"
           + (f" AND a.country IN ({countries})" if d.countries else "")
           + (f" AND d.model IN ({models})" if d.device_models else "") + " ORDER BY a.id, d.id")
    params = (d.setting, d.from_value, *d.countries, *d.device_models)
    conn_: Any
    cur: Any
    if url.startswith("sqlite"):
        import sqlite3
        conn_ = sqlite3.connect(url.removeprefix("sqlite:///"))
        cur = conn_.cursor()
    else:
        import psycopg
        conn_ = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        cur = conn_.cursor(name="audience")  # server-side, streamed
    cur.execute(sql, params)
    now = dt.datetime.now(dt.UTC)
    messages = 0

    def prove(person: Recipient, devices: list[DeviceView]) -> int:
        for wave, builder in zip(waves, builders, strict=True):
            r = renderer.render(wave, person, devices)
            builder.build(Parts(person.name, person.email, r.subject, r.text, r.html,
                                message_id(d.slug, wave.name, person.account_id, d.sender_domain), now))
        return len(waves)

    person: Recipient | None = None
    devices: list[DeviceView] = []
    while rows := cur.fetchmany(2000):
        for row in rows:
            if person is None or row[0] != person.account_id:
                if person is not None:
                    messages += prove(person, devices)
                person, devices = Recipient(row[0], row[1], row[2], row[3], row[4]), []
            devices.append(DeviceView(row[5], row[6], row[7]))
    if person is not None:
        messages += prove(person, devices)
    conn_.close()
    print(json.dumps({"messages": messages}))


def read_main(url: str) -> None:
    """Run as `python bench/schedule.py --read URL`: the audience read alone (`store.audience.iter_affected`, as
    `schedule` streams it), timed in-process; prints {"recipients": N, "seconds": S}."""
    from campaign import campaigns, db
    from campaign.store import audience

    engine = db.make_engine(url)
    with db.read(engine) as conn:
        d = campaigns.get(conn, SLUG).definition
        start = time.perf_counter()
        n = sum(1 for _ in audience.iter_affected(conn, d))
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        bounds = audience.account_bounds(conn, SHARES)
        m = sum(1 for after, upto in bounds for _ in audience.iter_affected(conn, d, after=after, upto=upto))
        shared = time.perf_counter() - start
    engine.dispose()
    if m != n:
        raise SystemExit(f"the {len(bounds)} shares read {m:,} recipients, the whole audience {n:,}")
    print(json.dumps({"recipients": n, "seconds": seconds, "shares": shared}))


# -- the runs --------------------------------------------------------------------------------------------

def timed(name: str, argv: list[str], env: dict[str, str], work: Path,
          command: list[str] = CAMPAIGN) -> tuple[float, int, int, str]:
    """(seconds, peak RSS KiB of the largest process, processes seen, stdout) of one whole process."""
    step, out = run_step(name, argv, env, work, timeout=1800, command=command)
    return step.seconds, step.peak_kib, step.processes, out


def bench(kind: str, url: str, work: Path, runs: int, jobs: int | None, base: Path | None) -> dict[str, Any]:
    env = env_for(url)
    sched = ["schedule", SLUG, "--json", *(["--jobs", str(jobs)] if jobs else [])]
    sides: dict[str, Callable[[], tuple[float, int, int, int]]] = {}

    def ours() -> tuple[float, int, int, int]:
        secs, peak, procs, out = timed("schedule", sched, env, work)
        cli(url, "unschedule", SLUG)
        return secs, peak, procs, int(json.loads(out)["rendered"])

    def reference() -> tuple[float, int, int, int]:
        secs, peak, procs, out = timed("reference", ["--reference", url], env, work,
                                       [sys.executable, str(Path(__file__).resolve())])
        return secs, peak, procs, int(json.loads(out)["messages"])

    def before() -> tuple[float, int, int, int]:
        assert base is not None
        secs, peak, procs, out = timed("before", ["-c", BASE_RUNNER, str(base), "schedule", SLUG, "--json"], env, work,
                                       [sys.executable])
        cli(url, "unschedule", SLUG)
        return secs, peak, procs, int(json.loads(out)["rendered"])

    sides["reference"] = reference
    sides["campaign"] = ours
    if base is not None:
        sides["before"] = before
    got: dict[str, list[tuple[float, int, int, int]]] = {name: [] for name in sides}
    for i in range(runs):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))  # interleaved, alternating who goes first
        for name in order:
            got[name].append(sides[name]())
            secs, peak, procs, n = got[name][-1]
            print(f"{kind} run {i + 1} {name:<9} {secs:7.2f} s  {n:,} messages  {n / secs:8,.0f}/s  "
                  f"peak RSS {peak / 1024:4.0f} MiB ({procs} process{'es' if procs > 1 else ''})  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    reads, shared = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--read", url], env=env, check=True,
                             capture_output=True, text=True).stdout
        reads.append(json.loads(out)["seconds"])
        shared.append(json.loads(out)["shares"])
    print(f"{kind}: the audience read alone (iter_affected): median {statistics.median(reads):.2f} s; in "
          f"{SHARES} shares one after the other (account_bounds included): {statistics.median(shared):.2f} s",
          flush=True)
    counts = {name: {r[3] for r in rs} for name, rs in got.items()}
    if len(set().union(*counts.values())) != 1:
        raise SystemExit(f"{kind}: the sides rendered different numbers of messages: {counts}")
    n = got["reference"][0][3]
    return {"read": statistics.median(reads), "sides": {
        name: {"seconds": statistics.median(r[0] for r in rs), "peak_mib": max(r[1] for r in rs) / 1024,
               "messages": n} for name, rs in got.items()}}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--reference", "--read"):
        (reference_main if sys.argv[1] == "--reference" else read_main)(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000, help="sample accounts (default 100,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="`schedule --jobs` (default: its own, one per CPU)")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--base", type=Path, help="a folder holding another checkout's `campaign` package")
    parser.add_argument("--data", type=Path, help="where the generated files are kept (reused if present)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.base is not None and not (args.base / "campaign" / "__init__.py").is_file():
        parser.error(f"--base {args.base}: no campaign/__init__.py there")

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-schedule-"))
    data = args.data or work / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / f".accounts-{args.accounts}").exists():
        print(f"generating {args.accounts:,} accounts into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(args.accounts), "--out",
                        str(data)], check=True, capture_output=True)
        (data / f".accounts-{args.accounts}").touch()
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        if args.only in (None, "sqlite"):
            url = f"sqlite:///{work / 'bench.db'}"
            print("sqlite: preparing the database ...", flush=True)
            prepare(url, data, work)
            results["sqlite"] = bench("sqlite", url, work, args.runs, args.jobs, args.base)
        if args.only in (None, "postgres"):
            pgdata = Path(tempfile.mkdtemp(prefix="campaign-bench-pg-"))
            server = Server(pgdata)
            try:
                settings = dict(server.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                                           "('fsync', 'synchronous_commit')"))
                assert settings == {"fsync": "on", "synchronous_commit": "on"}, settings
                print(f"postgres: own server on port {server.port}, {settings}; preparing the database ...",
                      flush=True)
                server.sql("CREATE DATABASE schedule_bench")
                url = server.url("schedule_bench")
                prepare(url, data, work)
                server.sql("VACUUM ANALYZE")
                results["postgres"] = bench("postgres", url, work, args.runs, args.jobs, args.base)
            finally:
                server.stop()
                shutil.rmtree(pgdata, ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.accounts:,} accounts, medians of {args.runs} runs, schedule --jobs {args.jobs or 'default'} on "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{time.perf_counter() - started:.0f} s in all")
    for kind, result in results.items():
        sides = result["sides"]
        ref = sides["reference"]["seconds"]
        print(f"{kind:<9} the audience read alone {result['read']:.2f} s")
        for name, r in sides.items():
            per = r["seconds"] / r["messages"]
            print(f"{kind:<9} {name:<9} {r['seconds']:7.2f} s  {r['messages'] / r['seconds']:8,.0f} msg/s  "
                  f"{per * 1e6:5.0f} us/msg  x{ref / r['seconds']:.2f} of the reference  peak RSS "
                  f"{r['peak_mib']:4.0f} MiB  1M projected {per * MILLION_MESSAGES:5.0f} s")


if __name__ == "__main__":
    main()

