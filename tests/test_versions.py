"""Each version of a definition is kept whole — its TOML and every template of its folder — and what changed since
the version last approved is a diff (issue 24: the review packet's "what changed since the last approved
version"). SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from campaign import versions
from tests.conftest import ROOT, CliRun
from tests.test_approval import AUTHOR, REVIEWER, as_, definition_text

SLUG = "voice-local-processing"
ACCOUNTS = "account_id,email,name,locale,timezone,country\na1,a1@example.com,Ann,en-US,America/New_York,US\n"
DEVICES = "device_id,account_id,name,model,voice_recordings\nd1,a1,Den,Echo Show 10,do_not_send\n"


def setup(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path]:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    return templates, write_file("def.toml", definition_text())


def test_each_version_is_kept_and_the_changes_since_the_approved_one_are_a_diff(
        run_cli: CliRun, engine: Engine, write_file: Callable[..., Path], tmp_path: Path) -> None:
    templates, path = setup(run_cli, write_file, tmp_path)
    env = {"CAMPAIGN_TEMPLATES": str(templates)}
    assert run_cli("create", str(path), env=as_(AUTHOR, **env)).exit_code == 0
    folder = templates / "voice-local-processing"
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.j2"))
    with engine.connect() as conn:
        cid = conn.execute(text("SELECT id FROM campaign")).scalar_one()
        kept = versions.store.files(conn, cid, 1)
        assert sorted(kept) == ["definition.toml", *(f"templates/{p}" for p in on_disk)]
        assert kept["definition.toml"][1] == path.read_text(encoding="utf-8")
        never = versions.since_approved(conn, cid)
    assert (never.current_version, never.approved_version, never.kept, never.files) == (1, None, True, ())

    assert run_cli("approve", SLUG, env=as_(REVIEWER, **env)).exit_code == 0
    with engine.connect() as conn:
        same = versions.since_approved(conn, cid)
    assert (same.current_version, same.approved_version, same.unchanged) == (1, 1, True)

    # The author changes the German notice's subject, adds a footer partial, and moves the reminder.
    subject = folder / "de-DE" / "notice.subject.j2"
    subject.write_text(subject.read_text(encoding="utf-8").rstrip("\n") + " (geändert)\n", encoding="utf-8")
    (folder / "en-US" / "_footer.txt.j2").write_text("Questions? {{ campaign.context.help_url }}\n", encoding="utf-8")
    body = path.read_text(encoding="utf-8")
    assert 'at = "cutoff - 3d"' in body
    path.write_text(body.replace('at = "cutoff - 3d"', 'at = "cutoff - 4d"'), encoding="utf-8")
    replaced = run_cli("create", str(path), "--replace", env=as_(AUTHOR, **env))
    assert replaced.exit_code == 0, replaced.output
    with engine.connect() as conn:
        changes = versions.since_approved(conn, cid)
        assert versions.store.latest(conn, cid) == 2
    assert (changes.current_version, changes.approved_version, changes.kept) == (2, 1, True)
    by_path = {f.path: f for f in changes.files}
    assert list(by_path) == ["definition.toml", "templates/de-DE/notice.subject.j2",
                            "templates/en-US/_footer.txt.j2"]
    assert by_path["definition.toml"].status == "changed"
    assert '-at = "cutoff - 3d"\n+at = "cutoff - 4d"\n' in by_path["definition.toml"].diff
    assert by_path["templates/de-DE/notice.subject.j2"].status == "changed"
    assert "(geändert)" in by_path["templates/de-DE/notice.subject.j2"].diff
    assert by_path["templates/en-US/_footer.txt.j2"].status == "added"
    assert "+Questions? {{ campaign.context.help_url }}" in by_path["templates/en-US/_footer.txt.j2"].diff
    # The numbering is the approvals' own: status names version 2 as the one waiting for approval.
    status = json.loads(run_cli("status", SLUG, "--json", env=as_(AUTHOR, **env)).stdout)
    assert status["approval"]["version"] == changes.current_version
    assert changes.as_json()["files"][0]["path"] == "definition.toml"


def test_a_dry_run_keeps_nothing_and_a_template_that_is_not_text_is_refused(
        run_cli: CliRun, engine: Engine, write_file: Callable[..., Path], tmp_path: Path) -> None:
    templates, path = setup(run_cli, write_file, tmp_path)
    env = {"CAMPAIGN_TEMPLATES": str(templates)}
    assert run_cli("create", str(path), "--dry-run", env=as_(AUTHOR, **env)).exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM version_file")).scalar() == 0
    bad = templates / "voice-local-processing" / "en-US" / "_extra.txt.j2"
    bad.write_bytes(b"caf\xe9\n")
    refused = run_cli("create", str(path), env=as_(AUTHOR, **env))
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "_extra.txt.j2: not UTF-8 text" in refused.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaign")).scalar() == 0


def test_check_warns_when_the_templates_were_edited_after_the_version_was_created(
        run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> None:
    templates, path = setup(run_cli, write_file, tmp_path)
    env = {"CAMPAIGN_TEMPLATES": str(templates)}
    assert run_cli("create", str(path), env=as_(AUTHOR, **env)).exit_code == 0

    def warnings() -> list[dict]:
        out = run_cli("check", SLUG, "--json", env=as_(AUTHOR, **env))
        assert out.exit_code == 0, out.output
        return [w for w in json.loads(out.stdout)["warnings"] if w["code"] == "templates-changed"]

    assert warnings() == []
    subject = templates / "voice-local-processing" / "en-US" / "reminder.subject.j2"
    subject.write_text("Last chance: " + subject.read_text(encoding="utf-8"), encoding="utf-8")
    found = warnings()
    assert len(found) == 1 and found[0]["version"] == 1
    assert found[0]["files"] == ["templates/en-US/reminder.subject.j2"]
    assert "en-US/reminder.subject.j2 (changed)" in found[0]["message"]
    assert run_cli("create", str(path), "--replace", env=as_(AUTHOR, **env)).exit_code == 0
    assert warnings() == []
