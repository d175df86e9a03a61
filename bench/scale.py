"""Scale-out benchmark: does throughput grow with worker processes? `campaign send SLUG --wave notice
--ignore-window --workers W` of about N recipients (default 20,000), as a whole process, into Postfix's smtp-sink on
127.0.0.1, on a PostgreSQL server of the benchmark's own with fsync and synchronous_commit on, for W = 1, 2 and 4
(`--workers`), alternating, median of several runs (`--runs`). Prints messages/s per worker count and the ratios
to one worker (goal: two >= 1.5x one on a 2-core machine). The reference is `--workers 1` itself, measured in the
same run. smtp-sink counts what it received, checked against the audience.

Then a duplicate check on a smaller run (`--check-recipients`, default 3,000): the same send with the largest worker
count into a recording SMTP server (aiosmtpd, tests/smtpd.py), which keeps every message: each recipient must
have received the notice exactly once, with its own Message-ID.

    ./run bench scale [--recipients N] [--runs K] [--workers 1,2,4] [--check-recipients M] [--timeout S] [--keep]
                      [--before CHECKOUT]

Reuses bench/send.py's harness (smtp-sink, the PostgreSQL server, the prepared database copied for each run).
"""

from __future__ import annotations

import argparse
import email
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/smtpd.py: the recording server
from send import (  # bench/send.py
    Database,
    Postgres,
    Sink,
    _terminate,
    bench_definition,
    ensure_smtp_sink,
    prepare_ours,
    run_ours,
)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def analyze(url: str) -> None:
    """Give the prepared database its planner statistics, so that each run's copy (CREATE DATABASE … TEMPLATE
    copies them) is planned as a database in use would be. A copy starts with no activity counters, so autovacuum
    never analyzes it; without statistics PostgreSQL plans the send's per-batch look-up of the recipients'
    affected devices as a nested loop over every affected device (about 9 s a batch at 45,000 accounts)."""
    from sqlalchemy import create_engine

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def duplicate_check(pg: Postgres, work: Path, recipients: int, workers: int, rate: float, timeout: float) -> str:
    """Send to a recording server with `workers` processes; every recipient must get exactly one message."""
    from tests.smtpd import SmtpServer

    server = SmtpServer(stall_seconds=5).start()
    try:
        definition = bench_definition(work, rate, None)
        database = Database("postgres", work / "check", pg)
        database.work.mkdir()
        if os.geteuid() == 0:
            shutil.chown(database.work, "postgres")
        audience = prepare_ours(database, work, definition, server.port, recipients)
        analyze(database.prepared_url())
        run = run_ours(database, database.work, server.port, workers, timeout)
        messages = server.messages
    finally:
        server.stop()
    per_recipient = Counter(m.recipients[0] for m in messages)
    ids = Counter(email.message_from_bytes(m.data)["Message-ID"] for m in messages)
    twice = sum(1 for k in per_recipient.values() if k > 1)
    verdict = "no duplicate" if twice == 0 and len(per_recipient) == audience and len(ids) == audience else \
        f"PROBLEM: {len(per_recipient):,} of {audience:,} recipients reached, {twice:,} twice"
    return (f"duplicate check: {len(messages):,} messages to {audience:,} recipients with --workers {workers} in "
            f"{run.seconds:.1f} s into a recording server: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=20_000, help="about this many (default 20,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4], help="worker counts (default 1,2,4)")
    parser.add_argument("--check-recipients", type=int, default=3_000,
                        help="the duplicate check's size (0 leaves it out)")
    parser.add_argument("--rate", type=float, default=1_000_000, help="rate_per_second of the benchmark's definition")
    parser.add_argument("--timeout", type=float, default=900, help="for one `campaign send` (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run the `campaign` package of CHECKOUT (the build before, on PYTHONPATH), "
                             "alternating with this one on the same database")
    args = parser.parse_args()
    if 1 not in args.workers:
        parser.error("--workers must include 1: it is the reference")
    signal.signal(signal.SIGTERM, _terminate)
    ensure_smtp_sink()

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-scale-"))
    sink: Sink | None = None
    pg: Postgres | None = None
    try:
        sink = Sink(work)
        pg = Postgres(work)
        print(f"smtp-sink on 127.0.0.1:{sink.port}; PostgreSQL (fsync on, synchronous_commit on) on "
              f"127.0.0.1:{pg.port}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
        definition = bench_definition(work, args.rate, None)
        database = Database("postgres", work / "postgres", pg)
        database.work.mkdir()
        if os.geteuid() == 0:
            shutil.chown(database.work, "postgres")
        print(f"preparing about {args.recipients:,} recipients ...", flush=True)
        audience = prepare_ours(database, work, definition, sink.port, args.recipients)
        analyze(database.prepared_url())

        builds: list[tuple[str, Path | None]] = [("this", None)]
        if args.before is not None:
            builds.insert(0, ("before", args.before.resolve()))
        rates: dict[tuple[str, int], list[float]] = {}
        cpus: dict[tuple[str, int], list[float]] = {}  # CPU ms a message, every process of the send
        peaks: dict[int, int] = {}
        for i in range(args.runs):
            for w in args.workers:
                for label, build in builds:
                    before = sink.messages()
                    run = run_ours(database, database.work, sink.port, w, args.timeout, build)
                    got = sink.settle(before, audience)
                    if got != audience:
                        print(f"  warning: smtp-sink counted {got:,}, expected {audience:,}", flush=True)
                    rates.setdefault((label, w), []).append(got / run.seconds)
                    cpus.setdefault((label, w), []).append(run.cpu_seconds * 1000 / max(got, 1))
                    peaks[w] = max(peaks.get(w, 0), run.peak_kib)
                    print(f"run {i + 1}: --workers {w} {label:<6} {run.seconds:6.2f} s  "
                          f"{rates[(label, w)][-1]:7,.0f} messages/s  cpu {cpus[(label, w)][-1]:.3f} ms/msg  "
                          f"db {run.db_seconds or 0:.2f} s of {run.db_of or 0:.2f} s", flush=True)

        print(f"\n{audience:,} recipients, PostgreSQL with fsync on, medians of {args.runs} runs; load average now "
              f"{os.getloadavg()[0]:.2f}")
        print(f"{'build':>6} {'workers':>7} {'messages/s':>11} {'to one':>7} {'CPU ms/msg':>10} {'peak RSS':>9}")
        for label, _ in builds:
            one = statistics.median(rates[(label, 1)])
            for w in args.workers:
                m = statistics.median(rates[(label, w)])
                print(f"{label:>6} {w:>7} {m:>11,.0f} {m / one:>6.2f}x {statistics.median(cpus[(label, w)]):>10.3f} "
                      f"{peaks[w] / 1024:>6.0f} MiB")
            if 2 in args.workers:
                print(f"{label}: two/one {statistics.median(rates[(label, 2)]) / one:.2f} (goal >= 1.5)")
        if args.check_recipients:
            print(duplicate_check(pg, work, args.check_recipients, max(args.workers), args.rate, args.timeout))
    finally:
        if sink is not None:
            sink.stop()
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
