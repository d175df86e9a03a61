"""Rate benchmark (issue 26): is the campaign's whole rate used when two `send` processes share it, and is it never
exceeded? Two `campaign send SLUG --wave notice --ignore-window --workers W` processes at once (default W = 2: four
workers), on a PostgreSQL server of the benchmark's own (fsync and synchronous_commit on) or SQLite, into a
recording SMTP server on 127.0.0.1 (aiosmtpd, tests/smtpd.py) that notes when each message arrived. The reference
is the definition's own `rate_per_second` (default 100): printed are the rate used (messages after the first three
seconds, while every worker has joined, over their span) and the busiest second as the relay saw it (the most
messages within one second of each other), each as a ratio to the rate, medians of K runs.

    ./run bench rate [--rate R] [--recipients N] [--runs K] [--workers W] [--database postgres|sqlite]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/smtpd.py: the recording server
from send import CAMPAIGN, SLUG, WAVE, Database, Postgres, _env, bench_definition, prepare_ours  # bench/send.py


def busiest_second(arrived: list[float]) -> int:
    most, j = 0, 0
    for i, t in enumerate(arrived):
        while arrived[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


def one_run(database: Database, work: Path, rate: float, workers: int, timeout: float) -> tuple[float, int, int]:
    """(rate used, busiest second, messages) of two send processes at once."""
    from tests.smtpd import SmtpServer

    server = SmtpServer().start()
    try:
        url = database.fresh_copy()
        argv = [*CAMPAIGN, "send", SLUG, "--wave", WAVE, "--ignore-window", "--workers", str(workers)]
        procs = [subprocess.Popen(argv, env=_env(url, server.port), cwd=work, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise SystemExit(f"campaign send failed (exit {proc.returncode}):\n{err.decode(errors='replace')}")
        arrived = sorted(m.received_at for m in server.messages)
    finally:
        server.stop()
    settled = arrived[0] + 3.0
    later = [t for t in arrived if t >= settled]
    return len(later) / (later[-1] - settled), busiest_second(arrived), len(arrived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--recipients", type=int, default=2_000, help="about this many (default 2,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of each of the two processes (default 2)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        work = Path(tmp)
        pg = Postgres(work) if args.database == "postgres" else None
        try:
            database = Database(args.database, work, pg)
            definition = bench_definition(work, args.rate, 4)
            audience = prepare_ours(database, work, definition, 25, args.recipients)
            print(f"{audience:,} recipients, rate_per_second {args.rate:g}, two processes of --workers "
                  f"{args.workers}, {args.database}", flush=True)
            used, busiest = [], []
            for i in range(args.runs):
                u, b, n = one_run(database, work, args.rate, args.workers, args.timeout)
                used.append(u)
                busiest.append(b)
                print(f"run {i + 1}: {n:,} messages; rate used {u:6.1f}/s ({u / args.rate:.2f}); busiest second "
                      f"{b} ({b / args.rate:.2f})", flush=True)
            print(f"median: rate used {statistics.median(used):.1f}/s ({statistics.median(used) / args.rate:.2f}; "
                  f"goal >= 0.90); busiest second {statistics.median(busiest):.0f} "
                  f"({statistics.median(busiest) / args.rate:.2f}; max {max(busiest)})")
        finally:
            if pg is not None:
                pg.stop()


if __name__ == "__main__":
    main()
