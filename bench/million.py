"""A million accounts end to end: `campaign` as its users run it, one whole process per step, on SQLite and on a
PostgreSQL server of the benchmark's own (fsync and synchronous_commit on, as production servers run):

    import accounts, import devices, create, schedule, send the notice (into Postfix's smtp-sink), flip, report
    (CSV), report (HTML)

Prints, per database, each step's wall time, what it processed, and its peak RSS: the largest VmHWM of the step's
process and of the processes it started (`send --workers N` has N worker processes), sampled from /proc every
50 ms — not wait4's ru_maxrss, which Linux carries over fork and exec from this parent. Goal: every step within
200 MiB. smtp-sink counts what it received, checked against the ledger's `sent`.

    ./run bench million [--accounts N] [--database sqlite,postgres] [--workers W] [--data DIR] [--keep]

The shipped definition is used with its cutoff 30 days ahead (else `schedule` refuses), `rate_per_second` high
enough not to limit, and without `min_notice` (the notice is sent a moment before the flip, so fair notice would
hold every device back: the flip is run with `--before-cutoff`). Sample data comes from `campaign.sample` (seed
7), generated once and kept with `--data DIR`. Not a comparison against a reference: the other benchmarks measure
each hot path against one; this one proves the whole story holds at a million, in time and memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send import (  # bench/send.py: smtp-sink, our own PostgreSQL server, RSS sampling
    DEFINITION,
    SLUG,
    TEMPLATES,
    Postgres,
    Sink,
    _sample_rss,
    _terminate,
    ensure_smtp_sink,
)

CAMPAIGN = [sys.executable, "-m", "campaign"]
LIMIT_MIB = 200


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    peak_kib: int  # the largest process of the step
    processes: int
    what: str  # what it processed, in words


def definition(work: Path) -> Path:
    """The shipped definition, its cutoff 30 days ahead, no rate cap, no min_notice."""
    text = DEFINITION.read_text(encoding="utf-8")
    cutoff = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    text, n = re.subn(r'(?m)^cutoff\s*=\s*"[^"]*"', f'cutoff = "{cutoff.isoformat()}"', text)
    text, m = re.subn(r"(?m)^rate_per_second\s*=.*$", "rate_per_second = 1000000", text)
    text = re.sub(r"(?m)^min_notice\s*=.*\n(?:\s+#.*\n)*", "", text)
    text = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text)  # one person runs it, no return path
    if n != 1 or m != 1 or "min_notice" in text:
        raise SystemExit(f"{DEFINITION}: cannot find its cutoff, rate_per_second and min_notice lines to adjust")
    out = work / "million.toml"
    out.write_text(text, encoding="utf-8")
    return out


def run_step(name: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float,
             command: list[str] = CAMPAIGN) -> tuple[Step, str]:
    """One `campaign` command (or `command`: bench/schedule.py's reference) as a whole process: its time, its (and
    its children's) peak RSS, its output."""
    out_path, err_path = cwd / f"{name}.out", cwd / f"{name}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([*command, *args], env=env, cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        ended: list[float] = []

        def reap() -> None:
            proc.wait()
            ended.append(time.perf_counter())

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        peaks: dict[int, int] = {}
        try:
            while reaper.is_alive() and time.perf_counter() < start + timeout:
                _sample_rss(proc.pid, peaks)
                reaper.join(0.05)
        finally:
            if reaper.is_alive():
                proc.kill()
                reaper.join()
    text = out_path.read_text(errors="replace")
    if not ended or ended[0] - start >= timeout:
        raise SystemExit(f"campaign {' '.join(args)} did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode}):\n{text}"
                         f"{err_path.read_text(errors='replace')}")
    return Step(name, ended[0] - start, max(peaks.values(), default=0), len(peaks), ""), text


def end_to_end(kind: str, url: str, data: Path, work: Path, sink: Sink, workers: int, timeout: float) -> list[Step]:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
           "CAMPAIGN_TEMPLATES": str(TEMPLATES), "CAMPAIGN_ACTOR": "bench"}
    env.pop("CAMPAIGN_CLOCK", None)
    run_step("upgrade", ["db", "upgrade"], env, work, timeout)
    toml = definition(work)
    plan: list[tuple[str, list[str]]] = [
        ("import accounts", ["import", "accounts", str(data / "accounts.csv"), "--json"]),
        ("import devices", ["import", "devices", str(data / "devices.csv"), "--json"]),
        ("create", ["create", str(toml), "--json"]),
        ("schedule", ["schedule", SLUG, "--json"]),
        (f"send notice ({workers} workers)", ["send", SLUG, "--wave", "notice", "--ignore-window", "--workers",
                                              str(workers), "--json"]),
        ("flip", ["flip", SLUG, "--before-cutoff", "--json"]),
        ("report csv", ["report", SLUG, "--format", "csv", "--out", str(work / "report.csv")]),
        ("report html", ["report", SLUG, "--format", "html", "--out", str(work / "report.html")]),
    ]
    steps: list[Step] = []
    for name, args in plan:
        before = sink.messages()
        step, out = run_step(name.split(" (")[0].replace(" ", "-"), args, env, work, timeout)
        what = describe(name, out, work)
        if name.startswith("send"):
            sent = json.loads(out)["counts"]["sent"]
            got = sink.settle(before, sent)
            what += f"; smtp-sink counted {got:,}" + ("" if got == sent else " (MISMATCH)")
        steps.append(Step(name, step.seconds, step.peak_kib, step.processes, what))
        print(f"  {kind:<10} {name:<24} {step.seconds:8.1f} s  {step.peak_kib / 1024:6.0f} MiB  {what}", flush=True)
    return steps


def describe(name: str, out: str, work: Path) -> str:
    """What a step did, from its own output."""
    if name.startswith("import"):
        r = json.loads(out)
        return f"{r['records']:,} records"
    if name == "create":
        return f"{json.loads(out)['rendered']} sample messages rendered"
    if name == "schedule":
        r = json.loads(out)
        recipients = next(i["recipients_now"] for i in r["timeline"] if i["step"] == "wave:notice")
        return f"{r['rendered']:,} messages rendered for {recipients:,} recipients"
    if name.startswith("send"):
        r = json.loads(out)
        return f"{r['counts']['sent']:,} sent, {r['counts']['suppressed']:,} suppressed ({r['attempted']:,} attempts)"
    if name == "flip":
        r = json.loads(out)
        return f"{r['changed']:,} devices switched, {r['held_back']:,} held back"
    if name == "report csv":
        with (work / "report.csv").open("rb") as fh:
            rows = sum(1 for _ in fh) - 1
        return f"{rows:,} rows"
    return f"{(work / 'report.html').stat().st_size / 1024:,.0f} KiB page"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as fh:
        mem = int(fh.readline().split()[1]) // 1024
    return (f"{os.cpu_count()} cores ({cpu}), {mem / 1024:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite,postgres", help="sqlite, postgres or both (default both)")
    parser.add_argument("--workers", type=int, default=2, help="`send --workers` (default 2)")
    parser.add_argument("--data", type=Path, help="keep the generated sample here (reused when present)")
    parser.add_argument("--timeout", type=float, default=7200, help="for one step (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.database.split(",") if k.strip()]
    if not kinds or set(kinds) - {"sqlite", "postgres"}:
        parser.error("--database: sqlite, postgres or sqlite,postgres")
    signal.signal(signal.SIGTERM, _terminate)
    ensure_smtp_sink()

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-million-"))
    data = args.data or work / "data"
    data.mkdir(parents=True, exist_ok=True)
    marker = data / f".accounts-{args.accounts}"
    if not marker.exists():
        print(f"generating {args.accounts:,} sample accounts into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(args.accounts), "--out",
                        str(data)], check=True, capture_output=True)
        marker.touch()
    sink: Sink | None = None
    pg: Postgres | None = None
    results: dict[str, list[Step]] = {}
    started = dt.datetime.now(dt.UTC)
    try:
        sink = Sink(work)
        print(f"{args.accounts:,} accounts; smtp-sink on 127.0.0.1:{sink.port}; {machine()}", flush=True)
        for kind in kinds:
            here = work / kind
            here.mkdir()
            if kind == "postgres":
                pg = Postgres(work)
                pg.sql('CREATE DATABASE "million"')
                url = pg.url("million")
                print(f"PostgreSQL (fsync on, synchronous_commit on) on 127.0.0.1:{pg.port}", flush=True)
            else:
                url = f"sqlite:///{here / 'campaign.db'}"
            results[kind] = end_to_end(kind, url, data, here, sink, args.workers, args.timeout)
            if pg is not None:
                pg.stop()
                pg = None
    finally:
        if sink is not None:
            sink.stop()
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    names = [s.name for s in next(iter(results.values()))]
    head = "| step | " + " | ".join(f"{k} time | {k} peak RSS" for k in results) + " | what (last database) |"
    print(f"\n{args.accounts:,} accounts, {started:%Y-%m-%d}, {machine()}\n")
    print(head.replace("sqlite", "SQLite").replace("postgres", "PostgreSQL"))
    print("|---" * (2 + 2 * len(results)) + "|")
    over = []
    for i, name in enumerate(names):
        cells = []
        for kind, steps in results.items():
            s = steps[i]
            cells.append(f"{s.seconds:,.1f} s | {s.peak_kib / 1024:,.0f} MiB")
            if s.peak_kib / 1024 > LIMIT_MIB:
                over.append(f"{kind} {name}: {s.peak_kib / 1024:.0f} MiB")
        print(f"| {name} | " + " | ".join(cells) + f" | {list(results.values())[-1][i].what} |")
    totals = " | ".join(f"{sum(s.seconds for s in steps):,.1f} s | –" for steps in results.values())
    print(f"| total | {totals} |")
    print(f"\nevery step within {LIMIT_MIB} MiB: " + ("yes" if not over else "NO — " + "; ".join(over)))


if __name__ == "__main__":
    main()
