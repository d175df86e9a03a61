"""Flip benchmark: `campaign flip` of about 300,000 devices with their change rows, as a whole process, against
bare batched SQL measured in the same run, on SQLite and on PostgreSQL (a server of its own, started here
with fsync and synchronous_commit on, as production runs).

The reference does the same job with the DBAPI and nothing else: per batch of 5,000 devices (keyset over the
affected devices, the campaign's audience filters included), one transaction with an `INSERT … SELECT` of the
change rows and one `UPDATE` of the settings pointing each at its change row. Ours is the real command line
(`campaign flip SLUG`); its time counts from its first batch (the first change row's `decided_at`) to the
process's end, so start-up (imports, engine, definition) is left out as the goal asks. Both start from a copy
of the same prepared database each run (a file copy on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL),
alternating; medians of the runs, the ratio, and our peak RSS.

    ./run bench flip [--accounts N] [--runs K] [--data DIR] [--only sqlite|postgres] [--base CHECKOUT]
                     [--stages N] [--keep]

The campaign is the shipped one with `require_notice = false` (the reference knows nothing of notices, and
the run is about writing the changes; with notices required, every device without a delivered notice would
be held back instead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLUG = "voice-local-processing"
BATCH = 5000
SETTING, FROM, TO = "voice_recordings", "do_not_send", "dont_save"
COUNTRIES = ("US", "CA", "GB", "DE", "AT", "JP")
MODELS = ("Echo Dot (4th Gen)", "Echo Show 10", "Echo Show 15")


def cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    result = subprocess.run([sys.executable, "-m", "campaign", *args], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def prepare(url: str, data: Path, definition: Path) -> None:
    """Schema, the sample accounts and devices, the campaign: the starting point of every run."""
    cli(url, "db", "upgrade")
    cli(url, "import", "accounts", str(data / "accounts.csv"))
    cli(url, "import", "devices", str(data / "devices.csv"))
    cli(url, "create", str(definition))


# -- the reference --------------------------------------------------------------------------------------

def reference(connect: Callable[[], Any], mark: str, now: Any) -> tuple[int, float]:
    """Bare batched SQL through the DBAPI; returns (devices flipped, seconds)."""
    p = mark
    conn = connect()
    cur = conn.cursor()
    cur.execute(f"SELECT id FROM campaign WHERE slug = {p}", (SLUG,))
    campaign_id = cur.fetchone()[0]
    conn.commit()
    countries = ", ".join(p for _ in COUNTRIES)
    models = ", ".join(p for _ in MODELS)
    where = (f"s.key = {p} AND s.value = {p} AND a.country IN ({countries}) AND d.model IN ({models})")
    fixed = (SETTING, FROM, *COUNTRIES, *MODELS)
    frm = "device_setting s JOIN device d ON d.id = s.device_id JOIN account a ON a.id = d.account_id"
    # the keyset bound on both sides of the join (PostgreSQL's planner does not carry it across the equality)
    select_ids = (f"SELECT s.device_id FROM {frm} WHERE {where} AND s.device_id > {p} AND d.id > {p} "
                  f"ORDER BY s.device_id LIMIT {BATCH}")
    insert = (f"INSERT INTO setting_change (campaign_id, device_id, account_id, setting, from_value, to_value, state, "
              f"actor, decided_at, flipped_at) SELECT {p}, s.device_id, d.account_id, {p}, {p}, {p}, 'changed', "
              f"'reference', {p}, {p} FROM {frm} WHERE {where} AND s.device_id >= {p} AND s.device_id <= {p} "
              f"AND d.id >= {p} AND d.id <= {p}")
    update = (f"UPDATE device_setting SET value = {p}, changed_at = {p}, change_id = (SELECT c.id "
              f"FROM setting_change c WHERE c.campaign_id = {p} AND c.device_id = device_setting.device_id) "
              f"WHERE key = {p} AND value = {p} AND device_id >= {p} AND device_id <= {p} AND device_id IN "
              f"(SELECT c.device_id FROM setting_change c WHERE c.campaign_id = {p} AND c.device_id >= {p} "
              f"AND c.device_id <= {p})")
    flipped, after = 0, ""
    start = time.perf_counter()
    while True:
        cur.execute(select_ids, (*fixed, after, after))
        ids = [r[0] for r in cur.fetchall()]
        if not ids:
            conn.commit()
            break
        lo, hi = ids[0], ids[-1]
        cur.execute(insert, (campaign_id, SETTING, FROM, TO, now, now, *fixed, lo, hi, lo, hi))
        cur.execute(update, (TO, now, campaign_id, SETTING, FROM, lo, hi, campaign_id, lo, hi))
        if cur.rowcount != len(ids):
            raise SystemExit(f"reference: {cur.rowcount} updated of {len(ids)}")
        conn.commit()
        flipped += len(ids)
        after = hi
    conn.close()  # timed too: ours ends with its process, which closes (on SQLite, checkpoints) its connection
    return flipped, time.perf_counter() - start


# -- ours -------------------------------------------------------------------------------------------------

First = Callable[[int | None], float]  # the first change row's decided_at (of a stage, when given), as a timestamp


def run_ours(url: str, first: First, code: Path | None = None, stages: int = 1) -> tuple[int, float, float, int]:
    """`campaign flip SLUG` as a process (the code of checkout `code`, when given: the same run measures the
    code before a change); with `stages` > 1, `flip SLUG --stage K` for each stage in turn, by hand (no
    stage_wait). Returns (devices flipped, seconds from each run's first batch to its end, added up, seconds in
    all, the largest peak RSS in KiB)."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    if code is not None:
        env["PYTHONPATH"] = str(code)  # with `-m`, the working directory comes first: it is `code` too, below
    changed, timed, total, peak = 0, 0.0, 0.0, 0
    for stage in range(1, stages + 1):
        args = ["--stage", str(stage)] if stages > 1 else []
        out_path = Path(tempfile.mkstemp(prefix="flip-out-")[1])
        started = time.time()
        with out_path.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "campaign", "flip", SLUG, "--json", *args], env=env,
                                    cwd=code or ROOT, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        ended = time.time()
        text = out_path.read_text()
        out_path.unlink()
        if proc.returncode != 0:
            raise SystemExit(f"campaign flip failed:\n{text}")
        changed += int(json.loads(text)["changed"])
        timed += ended - first(stage if stages > 1 else None)
        total += ended - started
        peak = max(peak, usage.ru_maxrss)
    return changed, timed, total, peak


# -- SQLite ---------------------------------------------------------------------------------------------

def _first_sql(stage: int | None) -> str:
    return "SELECT min(decided_at) FROM setting_change" + (f" WHERE stage = {int(stage)}" if stage else "")


def sqlite_first(path: Path) -> First:
    def first(stage: int | None) -> float:
        with sqlite3.connect(path) as conn:
            value = conn.execute(_first_sql(stage)).fetchone()[0]
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()
    return first


def bench_sqlite(work: Path, data: Path, definition: Path, runs: int, code: Path | None,
                 stages: int) -> dict[str, Any]:
    base = work / "base.db"
    if not base.exists():
        print("sqlite: preparing the database ...", flush=True)
        prepare(f"sqlite:///{base}", data, definition)
    run_db = work / "run.db"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def fresh() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{run_db}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(base, run_db)

    def connect() -> Any:
        conn = sqlite3.connect(run_db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as campaign's engine sets it
        return conn

    return alternate("sqlite", runs, fresh, lambda: reference(connect, "?", now),
                     lambda checkout: run_ours(f"sqlite:///{run_db}", sqlite_first(run_db), checkout, stages), code)


# -- PostgreSQL -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_pg(cmd: str) -> None:
    if os.geteuid() == 0:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], check=True, capture_output=True)
    else:
        subprocess.run(["sh", "-c", cmd], check=True, capture_output=True)


class Server:
    """A PostgreSQL server of the bench's own, on a free port, with its own data directory: durable settings
    (fsync, synchronous_commit and full_page_writes on: the defaults, unlike the tests' server)."""

    def __init__(self, data: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise SystemExit("PostgreSQL is not installed (.ci/postgres installs it)")
        self.bin = bins[-1].parent
        self.data, self.port = data, free_port()
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        _as_pg(f"'{self.bin}/initdb' -D '{data}' -U postgres -A trust -E UTF8 --locale=C.UTF-8")
        _as_pg(f"'{self.bin}/pg_ctl' -D '{data}' -l '{data}/server.log' -w -t 60 -o \"-h 127.0.0.1 -p {self.port} "
               f"-k '{data}' -c fsync=on -c synchronous_commit=on -c full_page_writes=on\" start")
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        import psycopg
        with psycopg.connect(self.admin, autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        _as_pg(f"'{self.bin}/pg_ctl' -D '{self.data}' -m fast stop")


def bench_postgres(work: Path, data: Path, definition: Path, runs: int, code: Path | None,
                   stages: int) -> dict[str, Any]:
    import psycopg

    pgdata = Path(tempfile.mkdtemp(prefix="campaign-bench-pg-"))  # its own, owned by the server's user
    server = Server(pgdata)
    try:
        settings = dict(server.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                                   "('fsync', 'synchronous_commit', 'full_page_writes')"))
        print(f"postgres: own server on port {server.port}: {settings}", flush=True)
        assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on", settings
        print("postgres: preparing the database ...", flush=True)
        server.sql("CREATE DATABASE flip_base")
        prepare(server.url("flip_base"), data, definition)
        server.sql("VACUUM ANALYZE")
        now = dt.datetime.now(dt.UTC)

        def fresh() -> None:
            server.sql('DROP DATABASE IF EXISTS "flip_run" WITH (FORCE)')
            server.sql('CREATE DATABASE "flip_run" TEMPLATE "flip_base"')

        def connect() -> Any:
            return psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/flip_run")

        def first(stage: int | None) -> float:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/flip_run") as conn:
                value = conn.execute(_first_sql(stage)).fetchone()  # type: ignore[arg-type]
            assert value is not None
            return float(value[0].timestamp())

        return alternate("postgres", runs, fresh, lambda: reference(connect, "%s", now),
                         lambda checkout: run_ours(server.url("flip_run"), first, checkout, stages), code)
    finally:
        server.stop()
        shutil.rmtree(pgdata, ignore_errors=True)


# -- the runs -------------------------------------------------------------------------------------------

def alternate(name: str, runs: int, fresh: Callable[[], None], ref: Callable[[], tuple[int, float]],
              our: Callable[[Path | None], tuple[int, float, float, int]], base: Path | None) -> dict[str, Any]:
    """Each run: the reference, ours and (with `base`) the code of that checkout, each from a fresh copy of the
    prepared database, in an order that turns from one run to the next (what one side leaves behind, a
    checkpoint to write, falls on each in turn); medians of the runs."""
    times: dict[str, list[float]] = {"reference": [], "campaign": [], "base": []}
    totals, peaks = [], []
    counts: dict[str, int] = {}

    def reference_side() -> None:
        counts["reference"], t = ref()
        times["reference"].append(t)

    def our_side() -> None:
        counts["campaign"], t, t_all, peak = our(None)
        times["campaign"].append(t), totals.append(t_all), peaks.append(peak)

    def base_side() -> None:
        counts["base"], t, _, _ = our(base)
        times["base"].append(t)

    sides = [reference_side, our_side] + ([base_side] if base is not None else [])
    for i in range(runs):
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            fresh()
            side()
        if len(set(counts.values())) != 1:
            raise SystemExit(f"{name}: the sides flipped different numbers of devices: {counts}")
        n = counts["campaign"]
        t_ref, t_our = times["reference"][-1], times["campaign"][-1]
        line = (f"{name} run {i + 1}: reference {t_ref:6.2f} s ({n / t_ref:>9,.0f}/s)   campaign {t_our:6.2f} s "
                f"from its first batch ({n / t_our:>9,.0f}/s; {totals[-1]:.2f} s with start-up)   "
                f"peak RSS {peaks[-1] / 1024:.0f} MiB")
        if base is not None:
            line += f"   base {times['base'][-1]:6.2f} s ({n / times['base'][-1]:>9,.0f}/s)"
        print(line, flush=True)
    n = counts["campaign"]
    r, o = n / statistics.median(times["reference"]), n / statistics.median(times["campaign"])
    out = {"devices": n, "reference": r, "ours": o, "ratio": o / r, "peak_mib": max(peaks) / 1024,
           "with_startup": n / statistics.median(totals)}
    if times["base"]:
        out["base"] = n / statistics.median(times["base"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=556_000,
                        help="sample accounts (default 556,000: about 300,000 affected devices)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="where the generated files are kept (reused if present)")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--base", type=Path, metavar="CHECKOUT",
                        help="also run the campaign code of this checkout (e.g. a worktree of main) in the same runs, "
                             "interleaved: before/after a change, measured together")
    parser.add_argument("--stages", type=int, default=1,
                        help="a staged flip of N equal stages ([flip] stages), each run by `flip --stage K` in turn "
                             "(default 1: the flip as shipped)")
    args = parser.parse_args()
    if not 1 <= args.stages <= 20:
        parser.error("--stages: 1 to 20")

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-flip-"))
    data = args.data or work / "data"
    data.mkdir(parents=True, exist_ok=True)
    marker = data / f".accounts-{args.accounts}"
    if not marker.exists():
        print(f"generating {args.accounts:,} accounts into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(args.accounts), "--out",
                        str(data)], check=True, capture_output=True)
        marker.touch()
    definition = work / "flip.toml"
    text = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text)  # no second person, no return path
    text = text.replace("require_notice = true", "require_notice = false")
    if args.stages > 1:
        shares = ", ".join(f'"{round(100 * k / args.stages, 2):g}%"' for k in range(1, args.stages + 1))
        text += f"\n[flip]\nstages = [{shares}]\n"
    definition.write_text(text, encoding="utf-8")
    if args.base is not None:
        for code in (ROOT, args.base):
            where = subprocess.run([sys.executable, "-c", "import campaign; print(campaign.__file__)"], cwd=code,
                                   env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True)
            print(f"code: {where.stdout.strip()}", flush=True)
    results = {}
    try:
        for name, fn in (("sqlite", bench_sqlite), ("postgres", bench_postgres)):
            if args.only in (None, name):
                results[name] = fn(work, data, definition, args.runs, args.base, args.stages)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    print()
    for name, r in results.items():
        print(f"{name:<9} {r['devices']:,} devices: reference {r['reference']:>9,.0f}/s   "
              f"campaign {r['ours']:>9,.0f}/s "
              f"from its first batch ({r['with_startup']:,.0f}/s with start-up)   ratio {r['ratio']:.2f} (goal >= 0.80)"
              f"   peak RSS {r['peak_mib']:.0f} MiB (goal <= 150)"
              + (f"   base {r['base']:,.0f}/s (ratio {r['base'] / r['reference']:.2f})" if "base" in r else ""))


if __name__ == "__main__":
    main()
