"""Registering campaigns, listing them, and the audience they reach now."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from tests.conftest import ROOT, CliRun, table_counts

EXAMPLE = ROOT / "data" / "voice-local-processing.toml"

ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            "a1,a1@example.com,Anna,de-DE,Europe/Berlin,DE\n"
            "a2,a2@example.com,Bob,en-US,America/New_York,US\n"
            "a3,a3@example.com,Yuki,ja-JP,Asia/Tokyo,JP\n"
            "a4,a4@example.com,Pierre,fr-FR,Europe/Paris,FR\n"
            "a5,a5@example.com,Ana,es-US,America/Los_Angeles,US\n")
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           "d1,a1,Küche,Echo Show 10,do_not_send\n"
           "d2,a1,Bad,Echo Show 15,do_not_send\n"
           "d3,a2,Den,Echo Dot (4th Gen),do_not_send\n"
           "d4,a2,Office,Echo Show 10,dont_save\n"
           "d5,a3,寝室,Echo Studio,do_not_send\n"      # model outside the campaign
           "d6,a4,Salon,Echo Show 10,do_not_send\n"    # country outside the campaign
           "d7,a5,Sala,Echo Show 10,do_not_send\n")


def setup(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    result = run_cli("create", str(EXAMPLE))
    assert result.exit_code == 0, result.output


def test_create_registers_campaign_and_waves(run_cli: CliRun, engine: Engine,
                                             write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    with engine.connect() as conn:
        campaign = conn.execute(text("SELECT slug, state, setting, from_value, to_value, definition, created_by "
                                     "FROM campaign")).one()
        waves = conn.execute(text("SELECT name, audience FROM wave ORDER BY position")).all()
        event = conn.execute(text("SELECT actor, action FROM audit_event WHERE action LIKE 'campaign.%'")).one()
    assert campaign.slug == "voice-local-processing" and campaign.state == "draft"
    assert (campaign.setting, campaign.from_value, campaign.to_value) == ("voice_recordings", "do_not_send",
                                                                         "dont_save")
    assert campaign.definition == EXAMPLE.read_text(encoding="utf-8")
    assert campaign.created_by == "tester"
    assert [tuple(w) for w in waves] == [("notice", "affected"), ("reminder", "affected"),
                                         ("confirmation", "changed")]
    assert tuple(event) == ("tester", "campaign.create")


def test_create_twice_refuses_and_replace_works(run_cli: CliRun, engine: Engine,
                                                write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    again = run_cli("create", str(EXAMPLE))
    assert again.exit_code == 1 and "exists already" in again.stderr and "--replace" in again.stderr
    changed = write_file("def.toml", EXAMPLE.read_text().replace('at = "cutoff - 3d"', 'at = "cutoff - 4d"'))
    result = run_cli("create", str(changed), "--replace")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        waves = conn.execute(text("SELECT name, at FROM wave ORDER BY position")).all()
    assert [w.name for w in waves] == ["notice", "reminder", "confirmation"]
    assert "2025-03-24" in str(waves[1].at)
    # A wave without templates is refused, and the campaign keeps its definition.
    renamed = write_file("def2.toml", EXAMPLE.read_text().replace('name = "reminder"', 'name = "last-call"'))
    refused = run_cli("create", str(renamed), "--replace")
    assert refused.exit_code == 2 and "[missing-templates]: no template for `en-US` / `last-call`" in refused.stderr
    assert "last-call.subject.j2" in refused.stderr  # where it looked
    with engine.connect() as conn:
        assert "reminder" in conn.execute(text("SELECT name FROM wave")).scalars().all()


def test_create_bad_definition_exit_2_nothing_written(run_cli: CliRun, engine: Engine,
                                                      write_file: Callable[..., Path]) -> None:
    before = table_counts(engine)
    bad = write_file("bad.toml", EXAMPLE.read_text().replace("-07:00", ""))
    result = run_cli("create", str(bad))
    assert result.exit_code == 2
    line = next(n for n, t in enumerate(bad.read_text().splitlines(), 1) if t.startswith("cutoff ="))
    assert f"{bad}:{line}: cutoff:" in result.stderr
    assert table_counts(engine) == before


def test_create_needs_template_folder(run_cli: CliRun, engine: Engine, tmp_path: Path) -> None:
    result = run_cli("create", str(EXAMPLE), env={"CAMPAIGN_TEMPLATES": str(tmp_path)})
    assert result.exit_code == 2 and "no template folder" in result.stderr


def test_create_dry_run(run_cli: CliRun, engine: Engine) -> None:
    before = table_counts(engine)
    result = run_cli("create", str(EXAMPLE), "--dry-run")
    assert result.exit_code == 0 and "would create" in result.stdout
    assert table_counts(engine) == before


def test_list(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    rows = json.loads(run_cli("list", "--json").stdout)
    assert rows == [{"campaign": "voice-local-processing", "name": "Retire 'Do not send voice recordings'",
                     "state": "draft", "cutoff": "2025-03-28T07:00:00+00:00", "deliveries": 0, "settled": 0,
                     "sent": 0, "devices_changed": 0}]
    assert "voice-local-processing" in run_cli("list").stdout


def test_audience_json_exactly_as_spec(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    plain = json.loads(run_cli("audience", "voice-local-processing", "--json").stdout)
    # a1: d1, d2; a2: d3 (d4 has the other value); a5: d7. a3's model and a4's country are outside.
    assert plain == {"campaign": "voice-local-processing", "accounts": 3, "devices": 4}
    by_locale = json.loads(run_cli("audience", "voice-local-processing", "--by", "locale", "--json").stdout)
    assert by_locale == {"campaign": "voice-local-processing", "accounts": 3, "devices": 4,
                         "by": {"de-DE": {"accounts": 1, "devices": 2}, "en-US": {"accounts": 1, "devices": 1},
                                "es-US": {"accounts": 1, "devices": 1}}}
    by_model = json.loads(run_cli("audience", "voice-local-processing", "--by", "model", "--json").stdout)
    assert by_model["by"] == {"Echo Dot (4th Gen)": {"accounts": 1, "devices": 1},
                              "Echo Show 10": {"accounts": 2, "devices": 2},
                              "Echo Show 15": {"accounts": 1, "devices": 1}}
    by_country = json.loads(run_cli("audience", "voice-local-processing", "--by", "country", "--json").stdout)
    assert by_country["by"] == {"DE": {"accounts": 1, "devices": 2}, "US": {"accounts": 2, "devices": 2}}


def test_audience_follows_the_persons_change(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    moved = DEVICES.replace("d3,a2,Den,Echo Dot (4th Gen),do_not_send", "d3,a2,Den,Echo Dot (4th Gen),save")
    assert run_cli("import", "devices", str(write_file("d2.csv", moved))).exit_code == 0
    out = json.loads(run_cli("audience", "voice-local-processing", "--json").stdout)
    assert (out["accounts"], out["devices"]) == (2, 3)


def test_audience_sample_and_text(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    setup(run_cli, write_file)
    out = json.loads(run_cli("audience", "voice-local-processing", "--sample", "2", "--json").stdout)
    assert [s["account_id"] for s in out["sample"]] == ["a1", "a2"]
    assert out["sample"][0]["devices"] == 2
    text_out = run_cli("audience", "voice-local-processing", "--by", "locale").stdout
    assert "3 accounts with 4 devices" in text_out and "de-DE" in text_out


def test_audience_unknown_campaign(run_cli: CliRun) -> None:
    result = run_cli("audience", "nope")
    assert result.exit_code == 2 and "no campaign 'nope'" in result.stderr


def test_shipped_example_end_to_end(run_cli: CliRun, tmp_path: Path) -> None:
    data = ROOT / "data"
    assert run_cli("import", "accounts", str(data / "accounts.csv")).exit_code == 0
    assert run_cli("import", "devices", str(data / "devices.csv")).exit_code == 0
    assert run_cli("create", str(EXAMPLE)).exit_code == 0
    out = json.loads(run_cli("audience", "voice-local-processing", "--by", "locale", "--json").stdout)
    assert out["accounts"] >= 100 and out["devices"] >= out["accounts"]
    assert {"en-US", "es-US", "de-DE", "de-AT", "ja-JP"} <= set(out["by"])
    assert sum(v["accounts"] for v in out["by"].values()) == out["accounts"]
    shutil.rmtree(tmp_path / "inputs", ignore_errors=True)
