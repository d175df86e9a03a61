"""Shared fixtures: a real SQLite file and a real PostgreSQL database per test, and the CLI runner.

PostgreSQL runs when CAMPAIGN_TEST_POSTGRES_URL names a server (an admin URL such as
postgresql+psycopg://postgres@127.0.0.1:5432/postgres); each test gets a fresh database copied from a
migrated template. Without it the PostgreSQL variants skip locally, and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Loaded at collection: when a run's tests never import it, hypothesis' terminal-summary hook does, at the very
# end, and on CPython 3.11.7 that import can fail ("SystemError: AST constructor recursion depth mismatch").
import hypothesis  # noqa: F401
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from campaign import migrate
from campaign.cli import cli
from campaign.db import make_engine
from tests.pgserver import own_postgres  # noqa: F401  (a PostgreSQL server of the test's own)
from tests.smtpd import smtpd, smtpd_factory  # noqa: F401  (fixtures for every test module)

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CAMPAIGN_TEST_POSTGRES_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first, in their usual order, then the rest: on several processes (`./run test` uses
    pytest-xdist, handing out one test at a time) the long ones start early and the short ones fill in around
    them, instead of a long one running on alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _pg_admin() -> Engine:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not PG_ADMIN_URL:
        if IN_CI:
            pytest.fail("CI=true but CAMPAIGN_TEST_POSTGRES_URL is not set: PostgreSQL tests must run in CI")
        pytest.skip("no PostgreSQL configured (set CAMPAIGN_TEST_POSTGRES_URL)")
    name = f"campaign_tpl_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / "campaign.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"campaign_t_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, migrated database: a SQLite file, then a PostgreSQL database."""
    yield from _fresh_database(request, request.param, tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty SQLite database (no schema)."""
    yield f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own, with no campaign.toml."""
    wd = tmp_path / "work"
    wd.mkdir()
    monkeypatch.chdir(wd)
    return wd


CliRun = Callable[..., Result]


@pytest.fixture
def run_cli(db_url: str, workdir: Path) -> CliRun:
    """Run `campaign ARGS…` in-process against the test database; returns click's Result."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        base = {"CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "tester",
                "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
        return runner.invoke(cli, list(args), input=input, env={**base, **(env or {})},
                             catch_exceptions=False)

    return run


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """Write text (or bytes) to a file under tmp_path and return its path."""

    def write(name: str, content: str | bytes, newline: str = "\n") -> Path:
        path = tmp_path / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.replace("\n", newline).encode("utf-8")
        path.write_bytes(content)
        return path

    return write


def table_counts(engine: Engine) -> dict[str, Any]:
    """Every table's rows, for proving that nothing was written."""
    from campaign.models import metadata
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            out[table.name] = sorted(tuple(map(str, r)) for r in conn.execute(table.select()).all())
    return out
