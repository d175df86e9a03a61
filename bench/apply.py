"""Apply benchmark: the flip through the settings service (`[apply] kind = "http"`, batch 500) against the tests'
loopback settings service (tests/settingsd.py, in a process of its own), in changes per second, compared with a
reference measured in the same run: the same batches, pre-built as JSON bytes, POSTed with httpx over one
keep-alive connection and their answers parsed: the HTTP and the service alone, nothing recorded anywhere.

    ./run bench apply [--devices N] [--runs K] [--batch B] [--only sqlite|postgres] [--keep]

Ours is `campaign.cutoff.flip.flip`, the verb `campaign flip` calls, in this process (start-up left out), on a copy of a
prepared database each run: SQLite, and PostgreSQL on a server of its own with fsync and synchronous_commit on
(bench/flip.py's). It records each batch's changes (`applying`, the batch and its Idempotency-Key) in one
transaction, sends it, and writes the answers (change rows `changed`, the local copy) in another. Before each
run, of either side, the service is reset and holds every device at `from`; after it, the service must have
applied every change exactly once. Medians of the runs, and the ratio ours/reference.
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
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLUG = "voice-local-processing"
SETTING, FROM, TO = "voice_recordings", "do_not_send", "dont_save"
TOKEN = "bench-token"  # the loopback service's own


def cli(url: str, *args: str) -> None:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "bench",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    env.pop("CAMPAIGN_CLOCK", None)
    result = subprocess.run([sys.executable, "-m", "campaign", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def write_inputs(work: Path, n: int, service_url: str, batch: int) -> tuple[Path, Path, Path]:
    """n accounts with one affected device each, and the shipped campaign applied through the service."""
    accounts, devices, definition = work / "accounts.csv", work / "devices.csv", work / "apply.toml"
    with accounts.open("w", encoding="utf-8") as a, devices.open("w", encoding="utf-8") as d:
        a.write("account_id,email,name,locale,timezone,country\n")
        d.write(f"device_id,account_id,name,model,{SETTING}\n")
        for i in range(n):
            a.write(f"a{i:07d},user{i}@example.com,User {i},en-US,America/New_York,US\n")
            d.write(f"d{i:07d},a{i:07d},Room {i},Echo Show 10,{FROM}\n")
    text = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("min_notice"))
    text = text.replace("require_notice = true", "require_notice = false")
    text += f'\n\n[apply]\nkind = "http"\nurl = "{service_url}"\nbatch = {batch}\ntimeout_seconds = 30\n'
    definition.write_text(text, encoding="utf-8")
    return accounts, devices, definition


class Service:
    """tests/settingsd.py in a process of its own, so that it shares no interpreter lock with either side."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.settingsd", "--token", TOKEN], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the settings service did not start: {self.url!r}")
        self.base = self.url.split("/v1/")[0]
        self.control = httpx.Client(timeout=60)

    def fresh(self, n: int) -> None:
        self.control.post(f"{self.base}/_control/reset").raise_for_status()
        held = {f"d{i:07d}": {SETTING: FROM} for i in range(n)}
        self.control.post(f"{self.base}/_control/hold", content=json.dumps(held)).raise_for_status()

    def check(self, n: int, who: str) -> None:
        stats = self.control.get(f"{self.base}/_control/stats").json()
        if stats["applications"] != n or stats["changes_applied_twice"]:
            raise SystemExit(f"{who}: the service applied {stats['applications']} changes "
                             f"({stats['changes_applied_twice']} twice), not {n} once each")

    def stop(self) -> None:
        self.control.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def reference_bodies(n: int, batch: int) -> list[tuple[str, bytes]]:
    """The same batches as ours, as the contract sends them, built before the clock starts."""
    out = []
    for start in range(0, n, batch):
        changes = [{"change_id": str(i + 1), "device_id": f"d{i:07d}", "setting": SETTING, "expect": FROM,
                    "value": TO} for i in range(start, min(n, start + batch))]
        body = json.dumps({"campaign": SLUG, "operation": "flip", "changes": changes}, separators=(",", ":"))
        out.append((f"{SLUG}:flip:{uuid.uuid4().hex}", body.encode()))
    return out


def run_reference(url: str, bodies: list[tuple[str, bytes]]) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    applied = 0
    with httpx.Client(headers=headers, timeout=30) as client:
        start = time.perf_counter()
        for key, body in bodies:
            response = client.post(url, content=body, headers={"Idempotency-Key": key})
            response.raise_for_status()
            applied += sum(1 for r in response.json()["results"] if r["status"] == "applied")
        return applied, time.perf_counter() - start


def run_ours(url: str) -> tuple[int, float]:
    from campaign.cutoff import flip
    from campaign.db import make_engine

    engine = make_engine(url)
    try:
        start = time.perf_counter()
        result = flip.flip(engine, SLUG, "bench", flip.FlipOptions(before_cutoff=True))
        elapsed = time.perf_counter() - start
    finally:
        engine.dispose()
    assert result.apply is not None
    if result.apply["paused"] or result.apply["unavailable"]:
        raise SystemExit(f"the flip stopped: {result.apply['paused'] or result.apply['unavailable']}")
    return result.changed, elapsed


def alternate(name: str, runs: int, n: int, service: Service, fresh_db: Callable[[], str],
              bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    refs, ours = [], []
    for i in range(runs):
        service.fresh(n)
        n_ref, t_ref = run_reference(service.url, bodies)
        service.check(n, "reference")
        url = fresh_db()
        service.fresh(n)
        n_our, t_our = run_ours(url)
        service.check(n, "campaign")
        if n_ref != n or n_our != n:
            raise SystemExit(f"{name}: campaign applied {n_our}, the reference {n_ref}, of {n}")
        refs.append(t_ref)
        ours.append(t_our)
        print(f"{name} run {i + 1}: reference {t_ref:6.2f} s ({n / t_ref:>8,.0f} changes/s)   "
              f"campaign {t_our:6.2f} s ({n / t_our:>8,.0f} changes/s)", flush=True)
    r, o = n / statistics.median(refs), n / statistics.median(ours)
    return {"changes": n, "reference": r, "ours": o, "ratio": o / r}


def bench_sqlite(work: Path, inputs: tuple[Path, Path, Path], n: int, runs: int, service: Service,
                 bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    base = work / "base.db"
    url = f"sqlite:///{base}"
    print("sqlite: preparing the database ...", flush=True)
    cli(url, "db", "upgrade")
    cli(url, "import", "accounts", str(inputs[0]))
    cli(url, "import", "devices", str(inputs[1]))
    cli(url, "create", str(inputs[2]))
    run_db = work / "run.db"

    def fresh() -> str:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{run_db}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(base, run_db)
        return f"sqlite:///{run_db}"

    return alternate("sqlite", runs, n, service, fresh, bodies)


def bench_postgres(work: Path, inputs: tuple[Path, Path, Path], n: int, runs: int, service: Service,
                   bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from flip import Server  # bench/flip.py: a PostgreSQL server of the bench's own, fsync on

    pgdata = Path(tempfile.mkdtemp(prefix="campaign-bench-apply-pg-"))
    server = Server(pgdata)
    try:
        settings = dict(server.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                                   "('fsync', 'synchronous_commit')"))
        assert settings == {"fsync": "on", "synchronous_commit": "on"}, settings
        print(f"postgres: own server on port {server.port}, {settings}; preparing the database ...", flush=True)
        server.sql("CREATE DATABASE apply_base")
        url = server.url("apply_base")
        cli(url, "db", "upgrade")
        cli(url, "import", "accounts", str(inputs[0]))
        cli(url, "import", "devices", str(inputs[1]))
        cli(url, "create", str(inputs[2]))
        server.sql("VACUUM ANALYZE")

        def fresh() -> str:
            server.sql('DROP DATABASE IF EXISTS "apply_run" WITH (FORCE)')
            server.sql('CREATE DATABASE "apply_run" TEMPLATE "apply_base"')
            return server.url("apply_run")

        return alternate("postgres", runs, n, service, fresh, bodies)
    finally:
        server.stop()
        shutil.rmtree(pgdata, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20_000, help="affected devices (one per account)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="[apply] batch")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    os.environ["CAMPAIGN_APPLY_TOKEN"] = TOKEN
    work = Path(tempfile.mkdtemp(prefix="campaign-bench-apply-"))
    service = Service()
    results = {}
    try:
        inputs = write_inputs(work, args.devices, service.url, args.batch)
        bodies = reference_bodies(args.devices, args.batch)
        for name, fn in (("sqlite", bench_sqlite), ("postgres", bench_postgres)):
            if args.only in (None, name):
                results[name] = fn(work, inputs, args.devices, args.runs, service, bodies)
    finally:
        service.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"apply: {args.devices:,} changes in batches of {args.batch}, medians of {args.runs} runs "
          f"(load average {os.getloadavg()[0]:.2f})")
    for name, r in results.items():
        print(f"  {name:<9} campaign {r['ours']:>8,.0f} changes/s   reference (httpx, pre-built JSON) "
              f"{r['reference']:>8,.0f} changes/s   ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
