"""Import benchmark: `campaign import accounts` + `import devices` of N accounts (default 1,000,000),
each as a whole process, against a reference measured in the same run: Python's csv module and sqlite3
`executemany` of the same rows into bare tables. Prints rows/s, the ratio, and our peak RSS.

    ./run bench import [--accounts N] [--runs K] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reference(accounts_csv: Path, devices_csv: Path, db_path: Path) -> tuple[float, float]:
    """csv.reader + executemany into bare tables, one transaction per file, batches of 5,000."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    timings = []
    for path in (accounts_csv, devices_csv):
        start = time.perf_counter()
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            table = path.stem
            conn.execute(f"CREATE TABLE {table} ({', '.join(f'{c} TEXT' for c in header)})")
            marks = ", ".join("?" for _ in header)
            conn.execute("BEGIN")
            batch: list[list[str]] = []
            for row in reader:
                batch.append(row)
                if len(batch) >= 5000:
                    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", batch)
                    batch.clear()
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", batch)
            conn.execute("COMMIT")
        timings.append(time.perf_counter() - start)
    conn.close()
    return timings[0], timings[1]


def ours(accounts_csv: Path, devices_csv: Path, db_path: Path) -> tuple[float, float, int]:
    """The real command line, one process per file; returns times and the larger peak RSS (KiB)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{db_path}", "CAMPAIGN_ACTOR": "bench"}
    subprocess.run([sys.executable, "-m", "campaign", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    timings, peak = [], 0
    for what, path in (("accounts", accounts_csv), ("devices", devices_csv)):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "campaign", "import", what, str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        timings.append(time.perf_counter() - start)
        out = proc.stdout.read().decode() if proc.stdout else ""
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"import {what} failed:\n{out}{err}")
        peak = max(peak, usage.ru_maxrss)
    return timings[0], timings[1], peak


def count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="where the generated files are kept (reused if present)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-"))
    data = args.data or work
    data.mkdir(parents=True, exist_ok=True)
    accounts_csv, devices_csv = data / "accounts.csv", data / "devices.csv"
    marker = data / f".accounts-{args.accounts}"
    if not marker.exists():
        print(f"generating {args.accounts:,} accounts into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(args.accounts),
                        "--out", str(data)], check=True, capture_output=True)
        marker.touch()
    n_acc, n_dev = count_rows(accounts_csv), count_rows(devices_csv)
    print(f"{n_acc:,} accounts, {n_dev:,} devices; {args.runs} runs, alternating\n", flush=True)

    ref_acc, ref_dev, our_acc, our_dev, peaks = [], [], [], [], []
    for i in range(args.runs):
        ra, rd = reference(accounts_csv, devices_csv, work / "reference.db")
        oa, od, peak = ours(accounts_csv, devices_csv, work / "campaign.db")
        ref_acc.append(ra), ref_dev.append(rd), our_acc.append(oa), our_dev.append(od), peaks.append(peak)
        print(f"run {i + 1}: reference {ra:6.2f} s + {rd:6.2f} s   campaign {oa:6.2f} s + {od:6.2f} s   "
              f"peak RSS {peak / 1024:.0f} MiB", flush=True)

    def line(what: str, n: int, ref: list[float], our: list[float]) -> float:
        r, o = n / statistics.median(ref), n / statistics.median(our)
        print(f"{what:<9} reference {r:>10,.0f} rows/s   campaign {o:>10,.0f} rows/s   ratio {o / r:.2f}")
        return o / r

    print()
    line("accounts", n_acc, ref_acc, our_acc)
    line("devices", n_dev, ref_dev, our_dev)
    total_ref = [a + d for a, d in zip(ref_acc, ref_dev, strict=True)]
    total_our = [a + d for a, d in zip(our_acc, our_dev, strict=True)]
    ratio = line("together", n_acc + n_dev, total_ref, total_our)
    peak = max(peaks) / 1024
    print(f"\npeak RSS of campaign: {peak:.0f} MiB (goal <= 200)   ratio {ratio:.2f} (goal >= 0.30)")


if __name__ == "__main__":
    main()
