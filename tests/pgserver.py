"""A PostgreSQL server of a test's own, to restart or stop in the middle of something (never the shared test
server on CAMPAIGN_TEST_POSTGRES_URL: other tests use it meanwhile).

tests/conftest.py offers every test module the fixture `own_postgres`: a started server (initdb'd by
`.ci/postgres` in a temp directory, on a free port from tests/ports.py, run as the postgres user when the tests run
as root) with an empty database `campaign`. `own_postgres.url` names it; `own_postgres.restart()` is
`pg_ctl restart -m fast` (every session is cut); `stop()` and `start()` take it away and bring it back. It is
stopped and removed at teardown. Without PostgreSQL installed the test skips, and fails under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))


class OwnPostgres:
    """A PostgreSQL server for one test, in /tmp/campaign-pg-restart-PORT-*."""

    def __init__(self, port: int) -> None:
        # A directory of its own, never one that a killed run left behind (or another run's, stopped for a while).
        self.port, self.data = port, Path(tempfile.mkdtemp(prefix=f"campaign-pg-restart-{port}-", dir="/tmp"))
        admin = subprocess.run([str(ROOT / ".ci" / "postgres"), str(port), str(self.data)], check=True,
                               capture_output=True, text=True).stdout.strip()
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text('CREATE DATABASE "campaign"'))
        engine.dispose()
        self.url = admin.rsplit("/", 1)[0] + "/campaign"

    def start(self) -> None:  # as .ci/postgres starts it: `pg_ctl start` alone would forget the port
        self.pg_ctl("-l", f"'{self.data}/server.log'", "-o", f"\"-h 127.0.0.1 -p {self.port} -k '{self.data}' "
                    "-c fsync=off -c synchronous_commit=off\"", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated, the server is back when this returns."""
        self.pg_ctl("-l", f"'{self.data}/server.log'", "-m", "fast", "restart")

    def pg_ctl(self, *args: str) -> None:
        cmd = f"'{PG_BIN[-1]}' -D '{self.data}' -w -t 60 {' '.join(args)}"
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]
        # Not captured: a restarted server would inherit the pipe, and reading it would never end.
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def own_postgres(workdir: Path) -> Iterator[OwnPostgres]:
    if not PG_BIN:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed here")
    server = OwnPostgres(free_port())
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(server.data, ignore_errors=True)


def own_cli(url: str) -> Callable[..., Any]:
    """Run `campaign ARGS…` in-process against `url` (click's Result), as the `run_cli` fixture does."""
    from click.testing import CliRunner

    from campaign.cli import cli

    def run(*args: str, env: dict[str, str] | None = None) -> Any:
        base = {"CAMPAIGN_DATABASE_URL": url, "CAMPAIGN_ACTOR": "tester", "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
        return CliRunner().invoke(cli, list(args), env={**base, **(env or {})}, catch_exceptions=False)
    return run
