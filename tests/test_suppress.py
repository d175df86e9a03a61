"""The suppression list: add, import (all or nothing), list; addresses normalized."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from tests.conftest import CliRun, table_counts


def test_add_normalizes_and_is_idempotent(run_cli: CliRun, engine: Engine) -> None:
    result = run_cli("suppress", "add", "Someone@EXAMPLE.Com", "--reason", "asked by phone")
    assert result.exit_code == 0 and "suppressed" in result.stdout
    again = run_cli("suppress", "add", "someone@example.com", "--reason", "again")
    assert "already suppressed" in again.stdout
    listed = json.loads(run_cli("suppress", "list", "--json").stdout)
    assert [(r["email"], r["reason"], r["source"]) for r in listed] == [
        ("Someone@example.com", "asked by phone", "manual")]
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT actor, action FROM audit_event ORDER BY id")).all()
    assert [tuple(a) for a in actions] == [("tester", "suppress.add"), ("tester", "suppress.add")]


def test_add_refuses_bad_address(run_cli: CliRun, engine: Engine) -> None:
    before = table_counts(engine)
    result = run_cli("suppress", "add", "nobody", "--reason", "x")
    assert result.exit_code == 2 and "not a valid email address" in result.stderr
    assert table_counts(engine) == before


def test_import_all_or_nothing(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    before = table_counts(engine)
    bad = write_file("s.csv", "email,reason\na@example.com,bounce\nbroken,complaint\n")
    result = run_cli("suppress", "import", str(bad))
    assert result.exit_code == 2 and f"{bad}:3: email:" in result.stderr
    assert table_counts(engine) == before
    good = write_file("s2.csv", "email,reason\na@Example.com,bounce\nb@example.com,\nA@example.COM,dup\n")
    result = run_cli("suppress", "import", str(good), "--reason", "legacy list")
    assert result.exit_code == 0, result.output
    assert "3 addresses, added 2, 1 already suppressed" in result.stdout
    with engine.connect() as conn:
        got = conn.execute(text("SELECT email, reason, source FROM suppression ORDER BY email")).all()
    assert [tuple(r) for r in got] == [("a@example.com", "bounce", "import"),
                                       ("b@example.com", "legacy list", "import")]


def test_import_dry_run(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    before = table_counts(engine)
    path = write_file("s.jsonl", '{"email": "a@example.com"}\n')
    result = run_cli("suppress", "import", str(path), "--dry-run")
    assert result.exit_code == 0 and "would add 1" in result.stdout
    assert table_counts(engine) == before


def test_case_is_folded_beyond_ascii(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    """`Üser@…` is `üser@…` on both databases (SQLite's own lower() folds ASCII only), in the SQL the ledger
    uses to record a suppressed delivery and in the look-up a sender makes before each message."""
    from sqlalchemy import select

    from campaign import db
    from campaign.models import ACCOUNT as A
    from campaign.store import suppressions

    assert run_cli("suppress", "add", "üser@bücher.example", "--reason", "asked").exit_code == 0
    again = run_cli("suppress", "add", "ÜSER@BÜCHER.example", "--reason", "again")
    assert "already suppressed" in again.stdout
    accounts = write_file("a.csv", "account_id,email,name,locale,timezone,country\n"
                                   "a1,Üser@bücher.example,Ü,de-DE,Europe/Berlin,DE\n"
                                   "a2,other@bücher.example,O,de-DE,Europe/Berlin,DE\n")
    assert run_cli("import", "accounts", str(accounts)).exit_code == 0
    with db.read(engine) as conn:
        assert suppressions.suppressed(conn, ["Üser@bücher.example", "other@bücher.example"]) == {"üser@bücher.example"}
        hits = conn.execute(select(A.c.id).where(suppressions.matches(A.c.email)).order_by(A.c.id)).all()
    assert [h[0] for h in hits] == ["a1"]
