"""Import benchmark: `campaign import accounts` + `import devices` of N accounts (default 200,000, the issue's
size), each as a whole process, against a reference measured in the same run, alternating:

- SQLite: Python's csv module and sqlite3 `executemany` of the same rows into bare tables;
- PostgreSQL (`--database postgres`, a server of the bench's own with fsync on, bench/flip.py's): the csv
  module and psycopg's `executemany` of the same rows into bare tables.

Prints rows/s per file and together, the ratio ours/reference, our peak RSS, the fixed cost of a process (an
import of a file with a header and no rows, subtracted nowhere: quoted beside the ratio), and with both
databases the PostgreSQL/SQLite time ratio of our imports of the same files.

Data (`--shape`): `sample` is campaign.sample's (one to three devices an account, one setting, plain ASCII);
`hard` is generated here: long and quoted names with commas and quotes in many scripts, internationalized
and mixed-case addresses on some 20,000 domains, every time zone, 80 locales, every country, up to twelve
devices an account and three setting columns with empty cells. `hard` also times the refusal of a copy of
its accounts file with bad rows (a line break inside a quoted name, bad addresses, unknown zones, a repeated
id): all of it read, every problem named, nothing written.

    ./run bench import [--accounts N] [--runs K] [--data DIR] [--shape sample|hard]
                       [--database sqlite,postgres] [--base DIR]

`--base DIR` runs the same imports from another checkout too (e.g. `git worktree add DIR main`), in the
same runs, after ours: before and after a change, side by side.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flip import Server  # noqa: E402  bench/flip.py: a PostgreSQL server of our own, fsync on

BATCH = 5000


# -- the reference ------------------------------------------------------------------------------------------

def _rows(path: Path) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """(table, header, batch) for each batch of 5,000 rows of a CSV file (the reference's reading)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        batch: list[list[str]] = []
        for row in reader:
            batch.append(row)
            if len(batch) >= BATCH:
                yield path.stem, header, batch
                batch = []
        yield path.stem, header, batch


def reference_sqlite(files: tuple[Path, Path], db_path: Path) -> tuple[float, float]:
    """csv.reader + executemany into bare tables, one transaction per file, batches of 5,000."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    timings = []
    for path in files:
        start = time.perf_counter()
        created = False
        conn.execute("BEGIN")
        for table, header, batch in _rows(path):
            if not created:
                conn.execute(f"CREATE TABLE {table} ({', '.join(f'{c} TEXT' for c in header)})")
                created = True
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in header)})", batch)
        conn.execute("COMMIT")
        timings.append(time.perf_counter() - start)
    conn.close()
    return timings[0], timings[1]


def reference_postgres(files: tuple[Path, Path], url: str) -> tuple[float, float]:
    """csv.reader + psycopg executemany into bare tables, one transaction per file, batches of 5,000."""
    import psycopg

    timings = []
    with psycopg.connect(url) as conn:
        for path in files:
            conn.execute(f"DROP TABLE IF EXISTS {path.stem}")  # type: ignore[arg-type]
            conn.commit()
            start = time.perf_counter()
            created = False
            with conn.cursor() as cur:
                for table, header, batch in _rows(path):
                    if not created:
                        cur.execute(f"CREATE TABLE {table} ({', '.join(f'{c} TEXT' for c in header)})")  # type: ignore[arg-type]
                        created = True
                    cur.executemany(f"INSERT INTO {table} VALUES ({', '.join('%s' for _ in header)})",  # type: ignore[arg-type]
                                    batch)
            conn.commit()
            timings.append(time.perf_counter() - start)
    return timings[0], timings[1]


# -- ours ---------------------------------------------------------------------------------------------------

def _campaign(env: dict[str, str], *args: str, tree: Path | None = None) -> tuple[float, int, str, int]:
    """One `campaign` process, of this checkout or of `tree`: (seconds, exit code, its output, peak RSS in KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "campaign", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=tree or ROOT)
    out = proc.stdout.read().decode() if proc.stdout else ""  # read before waiting: a long refusal fills the pipe
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, os.waitstatus_to_exitcode(status), out, usage.ru_maxrss


def ours(files: tuple[Path, Path], env: dict[str, str], tree: Path | None = None) -> tuple[float, float, int]:
    """The real command line, one process per file, into a fresh schema; times and the larger peak RSS."""
    timings, peak = [], 0
    for what, path in zip(("accounts", "devices"), files, strict=True):
        seconds, code, out, rss = _campaign(env, "import", what, str(path.resolve()), tree=tree)
        if code != 0:
            raise SystemExit(f"import {what} failed:\n{out}")
        timings.append(seconds)
        peak = max(peak, rss)
    return timings[0], timings[1], peak


class Target:
    """Where one database's runs go: a fresh database before each of ours and each reference run."""

    def __init__(self, name: str, work: Path) -> None:
        self.name, self.work = name, work
        self.server: Server | None = None
        if name == "postgres":
            self.pgdata = Path(tempfile.mkdtemp(prefix="campaign-bench-pg-"))
            self.server = Server(self.pgdata)
            settings = dict(self.server.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                                            "('fsync', 'synchronous_commit', 'full_page_writes')"))
            assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on", settings
            print(f"postgres: own server on port {self.server.port}: {settings}", flush=True)

    def fresh(self, db: str) -> str:
        """A fresh, empty database named `db`; its SQLAlchemy URL."""
        if self.server is None:
            path = self.work / f"{db}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return f"sqlite:///{path}"
        self.server.sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.server.sql(f'CREATE DATABASE "{db}"')
        return self.server.url(db)

    def env(self, url: str, tree: Path | None = None) -> dict[str, str]:
        """The environment of our processes (`tree`: another checkout's code, e.g. main's, run from there)."""
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench"}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        subprocess.run([sys.executable, "-m", "campaign", "db", "upgrade"], env=env, check=True,
                       capture_output=True, cwd=tree or ROOT)
        return env

    def reference(self, files: tuple[Path, Path]) -> tuple[float, float]:
        url = self.fresh("reference")
        if self.server is None:
            return reference_sqlite(files, Path(url.removeprefix("sqlite:///")))
        return reference_postgres(files, url.replace("postgresql+psycopg://", "postgresql://"))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.pgdata, ignore_errors=True)


def fixed_cost(target: Target, work: Path, tree: Path | None = None) -> float:
    """The time of `campaign import accounts` of a file with a header and no rows: what a process costs before
    its first row (starting Python, importing the command line, connecting, checking the schema)."""
    empty = work / "empty.csv"
    empty.write_text("account_id,email,name,locale,timezone,country\n", encoding="utf-8")
    return _campaign(target.env(target.fresh("empty"), tree), "import", "accounts", str(empty), tree=tree)[0]


# -- data ---------------------------------------------------------------------------------------------------

def sample_files(data: Path, accounts: int) -> tuple[Path, Path]:
    marker = data / f".sample-{accounts}"
    if not marker.exists():
        print(f"generating {accounts:,} sample accounts into {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(accounts), "--out", str(data)],
                       check=True, capture_output=True)
        marker.touch()
    return data / "accounts.csv", data / "devices.csv"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


LOCALES = _words('en-US en-GB de-DE de-AT de-CH fr-FR fr-CA es-ES es-MX pt-BR pt-PT it-IT nl-NL sv-SE nb-NO da-DK '
                  'fi-FI pl-PL cs-CZ hu-HU ro-RO el-GR tr-TR ru-RU uk-UA ar-EG ar-SA he-IL hi-IN bn-BD th-TH vi-VN '
                  'id-ID ms-MY ja-JP ko-KR zh-Hans-CN zh-Hant-TW sr-Latn-RS sr-Cyrl-RS az-Latn-AZ fa-IR sw-KE zu-ZA '
                  'ca-ES eu-ES gl-ES ga-IE cy-GB is-IS et-EE lv-LV lt-LT sk-SK sl-SI hr-HR bg-BG mk-MK ka-GE hy-AM '
                  'kk-KZ mn-MN ne-NP si-LK ta-IN te-IN ml-IN kn-IN mr-IN gu-IN ur-PK am-ET yo-NG ha-NG af-ZA fil-PH '
                  'en de fr es')
GIVEN = _words('Anna Jürgen Zoë Søren Łukasz Ángel François Ólafur Çağrı Nguyễn Dương Αλέξανδρος Дмитрий Ольга '
                "محمد فاطمة דוד 太郎 花子 민준 서연 अर्जुन প্রিয়া สมชาย Mary-Jane O'Brien")
FAMILY = _words('Müller Schröder García Núñez Kowalski Øster Dvořák Σταματόπουλος Иванова عبد الله כהן 山田 김 Şahin '
                 "Nguyễn Smith-Jones d'Arcy")
ROOMS = ("Kitchen", "Living room, upstairs", 'The "big" one', "Küche", "寝室", "Спальня", "Kid's room, 2nd",
         "غرفة المعيشة", "Büro")
MODELS = ("Echo Dot (4th Gen)", 'Echo Show 10, 3rd "Gen"', "Echo Studio", "Echo Pop", "Fire TV Cube, 2022",
          "Echo Auto")
IDN = ("bücher.example", "例子.example", "παράδειγμα.example", "пример.example", "Straße.example",
       "xn--bcher-kva.example")
SETTINGS = ("voice_recordings", "drop_in", "ad_tracking")
VALUES = {"voice_recordings": ("do_not_send", "dont_save", ""), "drop_in": ("on", "off", "household", ""),
          "ad_tracking": ("off", "on", "")}


def _hard_account(rnd: random.Random, i: int, zones: list[str], countries: list[str]) -> list[str]:
    given, family = rnd.choice(GIVEN), rnd.choice(FAMILY)
    name = rnd.choice((f"{given} {family}", f"{family}, {given}", f'{given} "{family[:3]}" {family}'))
    if rnd.random() < 0.05:  # long names up to the 256-character limit
        name = (name + " ") * 40
        name = name[:rnd.randint(120, 256)].strip()
    kind = rnd.random()
    local = f"{given}.{family}".lower() if given.isascii() and family.isascii() else f"user{i}"
    if kind < 0.70:
        email = f"{local.replace(' ', '').replace(chr(39), '')}+{i}@Co{rnd.randrange(20_000)}.Example.COM"
    elif kind < 0.85:
        email = f"u{i}@{rnd.choice(IDN)}"
    elif kind < 0.90:
        email = f"{given}{i}@{rnd.choice(IDN)}"  # a UTF-8 local part (RFC 6531)
    else:
        email = f"first.last_{i}-x@sub{rnd.randrange(500)}.mail.example.org"
    return [f"acct-{i:08d}-{rnd.getrandbits(64):016x}", email, name, rnd.choice(LOCALES),
            rnd.choice(zones), rnd.choice(countries)]


def hard_files(data: Path, accounts: int, seed: int = 26) -> tuple[Path, Path, Path]:
    """The hard data set: accounts.csv, devices.csv and accounts-bad.csv under data/hard-N."""
    out = data / f"hard-{accounts}"
    files = (out / "accounts.csv", out / "devices.csv", out / "accounts-bad.csv")
    if (out / ".done").exists():
        return files
    print(f"generating {accounts:,} hard accounts into {out} ...", flush=True)
    import zoneinfo

    from campaign.addresses import normalize_slow
    from campaign.validation import _countries
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    zones, countries = sorted(zoneinfo.available_timezones()), sorted(_countries())
    with files[0].open("w", newline="", encoding="utf-8") as fa, \
            files[1].open("w", newline="", encoding="utf-8") as fd, \
            files[2].open("w", newline="", encoding="utf-8") as fb:
        wa, wd, wb = csv.writer(fa), csv.writer(fd), csv.writer(fb)
        wa.writerow(("account_id", "email", "name", "locale", "timezone", "country"))
        wb.writerow(("account_id", "email", "name", "locale", "timezone", "country"))
        wd.writerow(("device_id", "account_id", "name", "model", *SETTINGS))
        seen_emails: dict[str, bool] = {}
        first_id = ""
        device = 0
        for i in range(accounts):
            row = _hard_account(rnd, i, zones, countries)
            domain = row[1].rpartition("@")[2]
            if domain not in seen_emails:  # a shape email-validator refuses would stop the import
                try:
                    normalize_slow(row[1])
                    seen_emails[domain] = True
                except ValueError:
                    seen_emails[domain] = False
            if not seen_emails[domain]:
                row[1] = f"plain{i}@example.com"
            wa.writerow(row)
            first_id = first_id or row[0]
            bad = list(row)
            if rnd.random() < 0.005:  # one row in 200: a line break in a quoted name, an address, a zone
                column, value = rnd.choice(((2, f"{row[2]}\nsecond line"), (1, "not an address"),
                                            (4, "Mars/Olympus")))
                bad[column] = value
            wb.writerow(bad)
            for _ in range(min(12, int(rnd.expovariate(1 / 2.5)))):
                device += 1
                wd.writerow([f"dev-{device:09d}-{rnd.getrandbits(32):08x}", row[0], rnd.choice(ROOMS),
                             rnd.choice(MODELS), *(rnd.choice(VALUES[k]) for k in SETTINGS)])
        wb.writerow([first_id or "acct-repeated", "a@example.com", "A", "en", "UTC", "US"])  # a repeated id
    (out / ".done").touch()
    return files


def count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


# -- the runs -----------------------------------------------------------------------------------------------

def bench(target: Target, files: tuple[Path, Path], runs: int, work: Path,
          base: Path | None = None) -> dict[str, Any]:
    """Alternating runs of the reference, ours, and (with `base`) the same commands from another checkout."""
    n_acc, n_dev = count_rows(files[0]), count_rows(files[1])
    print(f"\n{target.name}: {n_acc:,} accounts, {n_dev:,} devices; {runs} runs, alternating", flush=True)
    variants: list[tuple[str, Path | None]] = [("campaign", None), *([("base", base)] if base else [])]
    ref_acc: list[float] = []
    ref_dev: list[float] = []
    got: dict[str, dict[str, list[float]]] = {v: {"acc": [], "dev": [], "peak": [], "fixed": []} for v, _ in variants}
    for i in range(runs):
        ra, rd = target.reference(files)
        ref_acc.append(ra), ref_dev.append(rd)
        line = f"run {i + 1}: reference {ra:6.2f} s + {rd:6.2f} s"
        for name, tree in variants:
            oa, od, peak = ours(files, target.env(target.fresh("campaign"), tree), tree)
            fixed = fixed_cost(target, work, tree)
            for key, value in (("acc", oa), ("dev", od), ("peak", peak), ("fixed", fixed)):
                got[name][key].append(value)
            line += f"   {name} {oa:6.2f} s + {od:6.2f} s (fixed {fixed:.2f} s, {peak / 1024:.0f} MiB)"
        print(line, flush=True)

    ref_total = [a + d for a, d in zip(ref_acc, ref_dev, strict=True)]
    result: dict[str, Any] = {}
    for name, _ in variants:
        g = got[name]
        total = [a + d for a, d in zip(g["acc"], g["dev"], strict=True)]
        print(f"\n{name}:")
        for what, n, ref, our in (("accounts", n_acc, ref_acc, g["acc"]), ("devices", n_dev, ref_dev, g["dev"]),
                                  ("together", n_acc + n_dev, ref_total, total)):
            r, o = n / statistics.median(ref), n / statistics.median(our)
            print(f"{what:<9} reference {r:>10,.0f} rows/s   {name} {o:>10,.0f} rows/s   ratio {o / r:.2f}   "
                  f"(medians: {statistics.median(ref):.2f} s / {statistics.median(our):.2f} s)")
        fixed = statistics.median(g["fixed"])
        work_only = statistics.median(total) - 2 * fixed
        ratio = statistics.median(ref_total) / statistics.median(total)
        print(f"peak RSS {max(g['peak']) / 1024:.0f} MiB (goal <= 200); ratio {ratio:.2f} "
              f"(goal >= 0.5); a process's fixed cost {fixed:.2f} s (an empty file), twice in each total; without "
              f"them {work_only:.2f} s, ratio {statistics.median(ref_total) / work_only:.2f}")
        result[name] = {"ours": statistics.median(total), "acc": statistics.median(g["acc"]),
                        "dev": statistics.median(g["dev"])}
    return result


def refusal(target: Target, bad: Path, runs: int) -> None:
    """Our time to refuse the bad copy of the accounts: every row read, the problems named, nothing written."""
    times = []
    for _ in range(runs):
        seconds, code, out, _ = _campaign(target.env(target.fresh("refusal")), "import", "accounts", str(bad))
        assert code != 0, out[:500]
        times.append(seconds)
    first = out.strip().splitlines()[:2]
    print(f"{target.name}: refusing {bad.name}: {statistics.median(times):.2f} s (median of {runs}); it says: "
          + " | ".join(line[:120] for line in first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="where the generated files are kept (reused if present)")
    parser.add_argument("--shape", choices=("sample", "hard"), default="sample")
    parser.add_argument("--database", default="sqlite", help="sqlite, postgres or both (comma-separated)")
    parser.add_argument("--base", type=Path, help="another checkout (e.g. `git worktree add DIR main`) whose "
                        "imports run too, in the same runs: before and after a change, side by side")
    args = parser.parse_args()
    databases = [d.strip() for d in args.database.split(",") if d.strip()]
    if not databases or set(databases) - {"sqlite", "postgres"}:
        parser.error("--database: sqlite, postgres or sqlite,postgres")

    work = Path(tempfile.mkdtemp(prefix="campaign-bench-"))
    data = args.data or work
    data.mkdir(parents=True, exist_ok=True)
    bad = None
    if args.shape == "hard":
        acc, dev, bad = hard_files(data, args.accounts)
        files = (acc, dev)
    else:
        files = sample_files(data, args.accounts)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"{os.cpu_count()} cores; one process per import (no workers)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in databases:
            target = Target(name, work)
            try:
                results[name] = bench(target, files, args.runs, work, args.base)["campaign"]
                if bad is not None:
                    refusal(target, bad, args.runs)
            finally:
                target.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(results) == 2:
        pg, lite = results["postgres"], results["sqlite"]
        print(f"\nPostgreSQL / SQLite, our imports of the same files: accounts {pg['acc'] / lite['acc']:.2f}x, "
              f"devices {pg['dev'] / lite['dev']:.2f}x, together {pg['ours'] / lite['ours']:.2f}x (goal <= 1.5)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
