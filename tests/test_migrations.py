"""Alembic is wired to the models: `upgrade head` on an empty database gives the models' schema."""

from __future__ import annotations

import subprocess
import sys
import warnings

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from campaign import migrate
from campaign.models import metadata


def test_upgrade_head_matches_models(engine: Engine) -> None:
    # The `engine` fixture's database was built by `migrate.upgrade` (see conftest).
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLite's reflection cannot read expression indexes; the test below checks that one by name.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == []
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        indexes = {ix["name"] for t in metadata.sorted_tables for ix in inspect(conn).get_indexes(t.name)}
    if engine.dialect.name == "postgresql":
        assert "ix_suppression_email_lower" in indexes
    else:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                        "name = 'ix_suppression_email_lower'").scalar() is not None
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= tables
    assert migrate.current(engine) == migrate.head()


def test_upgrade_is_idempotent(engine: Engine) -> None:
    before, after = migrate.upgrade(engine)
    assert before == after == migrate.head()


def test_upgrade_from_empty(empty_db_url: str) -> None:
    from campaign.db import make_engine
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current(engine) is None
        before, after = migrate.upgrade(engine)
        assert before is None and after == migrate.head()
        assert "delivery" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_head_read_off_the_files_is_alembics_head(engine: Engine) -> None:
    # Every command checks the schema without loading Alembic: its reading must agree with Alembic's.
    from alembic.script import ScriptDirectory

    assert migrate.head() == ScriptDirectory.from_config(migrate._alembic_config()).get_current_head()
    with engine.connect() as conn:
        assert migrate.current(engine) == MigrationContext.configure(conn).get_current_revision() == migrate.head()


def test_the_schema_check_does_not_load_alembic() -> None:
    code = ("import sys, campaign.cli; "
            "print(sorted(m for m in sys.modules if m == 'alembic' or m.startswith(('alembic.', 'apscheduler'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
