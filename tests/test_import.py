"""Importing accounts and devices: CSV and JSON Lines, every validation, all or nothing, upsert."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import CliRun, table_counts

HEADER = "account_id,email,name,locale,timezone,country\n"
GOOD = (HEADER
        + "a1,anna@Example.COM,Anna Schmidt,de-DE,Europe/Berlin,DE\n"
        + 'a2,bob@example.com,"Smith, Jr., ""Bob""",en-US,America/New_York,us\n'
        + 'a3,yuki@example.jp,"山田, 太郎",ja-JP,Asia/Tokyo,JP\n'
        + "a4,pepe@example.com,José Núñez,es-US,America/Los_Angeles,US\n")
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           "d1,a1,Küche,Echo Show 10,do_not_send\n"
           "d2,a1,Wohnzimmer,Echo Dot (4th Gen),dont_save\n"
           'd3,a2,"Bob\'s ""Den"", upstairs",Echo Show 15,do_not_send\n'
           "d4,a3,寝室,Echo Show 10,do_not_send\n"
           "d5,a4,Sala,Echo Pop,do_not_send\n")


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_csv_import_round_trips(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                newline: str, bom: bool) -> None:
    content = GOOD.replace("\n", newline).encode()
    if bom:
        content = b"\xef\xbb\xbf" + content
    path = write_file("accounts.csv", content)
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 0, result.output
    assert "4 accounts: 4 new, 0 updated, 0 unchanged" in result.stdout
    got = rows(engine, "SELECT id, email, name, locale, timezone, country FROM account ORDER BY id")
    assert got == [
        ("a1", "anna@example.com", "Anna Schmidt", "de-DE", "Europe/Berlin", "DE"),
        ("a2", "bob@example.com", 'Smith, Jr., "Bob"', "en-US", "America/New_York", "US"),
        ("a3", "yuki@example.jp", "山田, 太郎", "ja-JP", "Asia/Tokyo", "JP"),
        ("a4", "pepe@example.com", "José Núñez", "es-US", "America/Los_Angeles", "US"),
    ]


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_statistics_are_fresh_after_an_import(run_cli: CliRun, engine: Engine,
                                                        write_file: Callable[..., Path]) -> None:
    # Without statistics PostgreSQL plans the audience's joins for empty tables (seconds a batch at scale).
    assert run_cli("import", "accounts", str(write_file("accounts.csv", GOOD))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("devices.csv", (
        "device_id,account_id,name,model,voice_recordings\nd1,a1,Kitchen,Echo Dot,do_not_send\n")))).exit_code == 0
    analyzed = dict(rows(engine, "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                                 "WHERE relname IN ('account', 'device', 'device_setting')"))
    assert analyzed == {"account": True, "device": True, "device_setting": True}


def test_name_with_line_break_is_refused(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    # A name ends up in a To: header: a line break there is refused at the door (line of the record).
    path = write_file("accounts.csv", HEADER + "a1,anna@example.com,Anna,de-DE,Europe/Berlin,DE\n"
                      + 'a3,yuki@example.jp,"山田\n太郎",ja-JP,Asia/Tokyo,JP\n')
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: name: must be one printable line (contains a line break" in result.stderr
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(0,)]


def good_accounts() -> str:
    return GOOD


def test_jsonl_import(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    lines = [json.dumps({"account_id": "j1", "email": "j1@example.com", "name": "Jörg \"J\" Ölz",
                         "locale": "de-AT", "timezone": "Europe/Vienna", "country": "AT"}, ensure_ascii=False),
             "",
             json.dumps({"account_id": "2", "email": "j2@example.com", "name": "Two", "locale": "en-GB",
                         "timezone": "Europe/London", "country": "GB"})]
    path = write_file("accounts.jsonl", "\n".join(lines) + "\n")
    result = run_cli("import", "accounts", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inserted"] == 2
    assert rows(engine, "SELECT id, name, locale FROM account ORDER BY id") == [
        ("2", "Two", "en-GB"), ("j1", 'Jörg "J" Ölz', "de-AT")]
    dev = write_file("devices.jsonl", json.dumps({"device_id": "jd1", "account_id": "j1", "name": "Küche",
                                                  "model": "Echo Show 10", "voice_recordings": "do_not_send",
                                                  "settings": {"wake_word": "alexa"}}) + "\n")
    result = run_cli("import", "devices", str(dev))
    assert result.exit_code == 0, result.output
    assert rows(engine, "SELECT device_id, key, value FROM device_setting ORDER BY key") == [
        ("jd1", "voice_recordings", "do_not_send"), ("jd1", "wake_word", "alexa")]


ACCOUNT_CASES = [
    ("a9,not-an-address,N,en-US,America/New_York,US", "email: 'not-an-address' is not a valid email address"),
    ("a9,x@example.com,N,xx-YY,America/New_York,US", "locale: unknown locale 'xx-YY'"),
    ("a9,x@example.com,N,en-US,Mars/Olympus,US", "timezone: unknown time zone 'Mars/Olympus'"),
    ("a9,x@example.com,N,en-US,America/New_York,XX", "country: unknown country 'XX'"),
    ("a9,x@example.com,,en-US,America/New_York,US", "name: must not be empty"),
    (",x@example.com,N,en-US,America/New_York,US", "account_id: must not be empty"),
    ("a9,x@example.com,N,en-US,America/New_York", "expected 6 fields as in the header, found 5"),
    ("a1,dup@example.com,Dup,en-US,America/New_York,US", "account_id 'a1' appears again (first at line 2)"),
]


@pytest.mark.parametrize(("row", "message"), ACCOUNT_CASES)
def test_account_validation(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                            row: str, message: str) -> None:
    before = table_counts(engine)
    path = write_file("accounts.csv", good_accounts() + row + "\n")
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:6: {message}" in result.stderr
    assert "Nothing was written." in result.stderr
    assert "Traceback" not in result.output
    assert table_counts(engine) == before


def test_missing_and_unknown_columns(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    path = write_file("accounts.csv", "account_id,email,name,locale,tz,country\na1,a@example.com,A,en-US,UTC,US\n")
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: missing column: timezone" in result.stderr
    assert f"{path}:1: unknown column: tz" in result.stderr
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(0,)]


def test_jsonl_missing_and_unknown_keys(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    path = write_file("a.jsonl", '{"account_id": "a1", "email": "a@example.com", "name": "A", "locale": "en-US",'
                                 ' "timezone": "UTC", "colour": "red"}\n{"broken": \n[1, 2]\n')
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: missing column: country" in result.stderr
    assert "unknown column: colour" in result.stderr
    assert f"{path}:2: not valid JSON" in result.stderr
    assert f"{path}:3: expected a JSON object on each line" in result.stderr


def test_not_utf8_names_the_line(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    content = (HEADER + "a1,a@example.com,Ann,en-US,UTC,US\n").encode() + b"a2,b@example.com,B\xe9b,en-US,UTC,US\n"
    path = write_file("latin1.csv", content)
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: not UTF-8 text" in result.stderr


def test_empty_file_and_missing_file(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> None:
    result = run_cli("import", "accounts", str(write_file("empty.csv", "")))
    assert result.exit_code == 2 and "the file is empty" in result.stderr
    result = run_cli("import", "accounts", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_at_most_20_problems_then_a_count(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    bad = "".join(f"b{i},bad-address-{i},N,en-US,UTC,US\n" for i in range(25))
    path = write_file("accounts.csv", HEADER + bad)
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{path}:")]
    assert len(lines) == 20
    assert lines[0].startswith(f"{path}:2: ") and lines[-1].startswith(f"{path}:21: ")
    assert f"... and 5 more problems in {path}" in result.stderr


def import_good(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    assert run_cli("import", "accounts", str(write_file("accounts.csv", good_accounts()))).exit_code == 0
    result = run_cli("import", "devices", str(write_file("devices.csv", DEVICES)))
    assert result.exit_code == 0, result.output


def test_reimport_changes_nothing(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    import_good(run_cli, write_file)
    snapshot = table_counts(engine)
    result = run_cli("import", "accounts", str(write_file("accounts.csv", good_accounts())))
    assert "0 new, 0 updated, 4 unchanged" in result.stdout
    result = run_cli("import", "devices", str(write_file("devices.csv", DEVICES)))
    assert "0 new, 0 updated, 5 unchanged" in result.stdout
    after = table_counts(engine)
    after.pop("audit_event"), snapshot.pop("audit_event")
    assert after == snapshot


def test_upsert_touches_only_rows_in_file(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    import_good(run_cli, write_file)
    before = rows(engine, "SELECT id, email, name, updated_at FROM account WHERE id <> 'a2' ORDER BY id")
    path = write_file("more.csv", HEADER + "a2,bob@example.com,Robert,en-US,America/New_York,US\n"
                      "a5,eve@example.com,Eve,en-CA,America/Toronto,CA\n")
    result = run_cli("import", "accounts", str(path))
    assert "1 new, 1 updated, 0 unchanged" in result.stdout
    assert rows(engine, "SELECT name FROM account WHERE id = 'a2'") == [("Robert",)]
    after = rows(engine, "SELECT id, email, name, updated_at FROM account WHERE id NOT IN ('a2', 'a5') ORDER BY id")
    assert after == before


def test_changed_setting_is_the_persons_own_change(run_cli: CliRun, engine: Engine,
                                                   write_file: Callable[..., Path]) -> None:
    import_good(run_cli, write_file)
    (first_at,) = rows(engine, "SELECT changed_at FROM device_setting WHERE device_id = 'd1'")[0]
    # Pretend a campaign had written d1's value, so we can see the import forget that.
    with engine.begin() as conn:
        conn.execute(text("UPDATE device_setting SET change_id = NULL WHERE device_id = 'd1'"))
    changed = DEVICES.replace("d1,a1,Küche,Echo Show 10,do_not_send", "d1,a1,Küche,Echo Show 10,save")
    result = run_cli("import", "devices", str(write_file("devices2.csv", changed)))
    assert result.exit_code == 0
    assert "0 new, 1 updated, 4 unchanged, 1 setting value(s) changed by their owners" in result.stdout
    value, changed_at, change_id = rows(
        engine, "SELECT value, changed_at, change_id FROM device_setting WHERE device_id = 'd1'")[0]
    assert value == "save" and change_id is None
    assert str(changed_at) > str(first_at)
    # The other devices' settings kept their first time.
    assert rows(engine, "SELECT COUNT(*) FROM device_setting WHERE changed_at = "
                        "(SELECT changed_at FROM device_setting WHERE device_id = 'd2')") == [(4,)]
    events = rows(engine, "SELECT actor, action, detail FROM audit_event WHERE action = 'import.devices' "
                          "ORDER BY id")
    assert events[-1][0] == "tester" and json.loads(str(events[-1][2]))["settings_changed"] == 1


def test_empty_setting_cell_leaves_value(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    import_good(run_cli, write_file)
    blank = DEVICES.replace("d1,a1,Küche,Echo Show 10,do_not_send", "d1,a1,Küche,Echo Show 10,")
    assert run_cli("import", "devices", str(write_file("devices2.csv", blank))).exit_code == 0
    assert rows(engine, "SELECT value FROM device_setting WHERE device_id = 'd1'") == [("do_not_send",)]


DEVICE_CASES = [
    ("d9,zz,Hall,Echo Show 10,do_not_send", "account_id: no account 'zz' (import accounts first)"),
    ("d1,a1,Again,Echo Show 10,do_not_send", "device_id 'd1' appears again (first at line 2)"),
    ("d9,a1,,Echo Show 10,do_not_send", "name: must not be empty"),
    ("d9,a1,Hall,,do_not_send", "model: must not be empty"),
]


@pytest.mark.parametrize(("row", "message"), DEVICE_CASES)
def test_device_validation(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                           row: str, message: str) -> None:
    assert run_cli("import", "accounts", str(write_file("accounts.csv", good_accounts()))).exit_code == 0
    before = table_counts(engine)
    path = write_file("devices.csv", DEVICES + row + "\n")
    result = run_cli("import", "devices", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:7: {message}" in result.stderr
    assert table_counts(engine) == before


def test_device_columns_must_be_setting_names(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    path = write_file("devices.csv", "device_id,account_id,name,Voice Recordings\n")
    result = run_cli("import", "devices", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: missing column: model" in result.stderr
    assert "unknown column: Voice Recordings" in result.stderr


def test_dry_run_writes_nothing(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    before = table_counts(engine)
    result = run_cli("import", "accounts", str(write_file("accounts.csv", good_accounts())), "--dry-run")
    assert result.exit_code == 0 and "would import 4 accounts: 4 new" in result.stdout
    assert table_counts(engine) == before


def test_shipped_example_imports(run_cli: CliRun, engine: Engine) -> None:
    root = Path(__file__).resolve().parent.parent / "data"
    assert run_cli("import", "accounts", str(root / "accounts.csv")).exit_code == 0
    result = run_cli("import", "devices", str(root / "devices.csv"))
    assert result.exit_code == 0, result.output
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(500,)]


def test_reader_keeps_quoted_line_breaks_and_counts_lines(write_file: Callable[..., Path]) -> None:
    from campaign.intake.readers import RecordReader
    path = write_file("r.csv", 'a,b\n"x\ny",1\n"p,""q""",2\n\nz,3\n', newline="\r\n")
    with RecordReader(path) as reader:
        assert reader.header() == ["a", "b"]
        got = [(r.line, r.fields) for r in reader]
    assert got == [(2, ["x\r\ny", "1"]), (4, ['p,"q"', "2"]), (6, ["z", "3"])]


def test_error_after_multiline_record_names_its_own_line(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    path = write_file("accounts.csv", HEADER + 'a1,a@example.com,"Ann\nLee",en-US,UTC,US\n'
                      "a2,b@example.com,Bob,en-US,UTC,ZZ\n")
    result = run_cli("import", "accounts", str(path))
    assert f"{path}:2: name: must be one printable line (contains a line break" in result.stderr
    assert f"{path}:4: country: unknown country 'ZZ'" in result.stderr


# -- hostile text (issue 21, item 11): refused at the door, with FILE:LINE, nothing written ---------------

CONTROLS = {"NUL": "\x00", "ESC": "\x1b", "VT": "\x0b", "DEL": "\x7f", "NEL": "\x85", "U+2028": "\u2028",
            "U+2029": "\u2029"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("char", list(CONTROLS), ids=list(CONTROLS))
def test_control_characters_in_names_and_values_are_refused(run_cli: CliRun, engine: Engine,
                                                           write_file: Callable[..., Path], fmt: str,
                                                           char: str) -> None:
    bad = CONTROLS[char]
    account = {"account_id": "a9", "email": "x@example.com", "name": f"Eve{bad}Evil", "locale": "en-US",
               "timezone": "America/New_York", "country": "US"}
    devices = [{"device_id": "d9", "account_id": "a1", "name": f"Ha{bad}ll", "model": "Echo Show 10",
                "voice_recordings": "do_not_send"},
               {"device_id": "d10", "account_id": "a1", "name": "Hall", "model": f"Echo{bad}Show",
                "voice_recordings": "do_not_send"},
               {"device_id": "d11", "account_id": "a1", "name": "Hall", "model": "Echo Show 10",
                "voice_recordings": f"do_not{bad}send"}]

    def as_file(name: str, records: list[dict[str, str]], header: str) -> Path:
        if fmt == "jsonl":
            return write_file(f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return write_file(f"{name}.csv", header + "".join(
            ",".join('"' + v.replace('"', '""') + '"' for v in r.values()) + "\n" for r in records))

    assert run_cli("import", "accounts", str(write_file("ok.csv", GOOD))).exit_code == 0
    before = table_counts(engine)
    path = as_file("accounts", [account], HEADER)
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:{2 if fmt == 'csv' else 1}: name: must be one printable line (contains" in result.stderr
    assert "Traceback" not in result.output

    path = as_file("devices", devices, "device_id,account_id,name,model,voice_recordings\n")
    result = run_cli("import", "devices", str(path))
    assert result.exit_code == 2, result.output
    first = 2 if fmt == "csv" else 1
    assert f"{path}:{first}: name: must be one printable line" in result.stderr
    assert f"{path}:{first + 1}: model: must be one printable line" in result.stderr
    assert f"{path}:{first + 2}: voice_recordings: must be one printable line" in result.stderr

    path = as_file("suppressions", [{"email": "s@example.com", "reason": f"asked{bad}us"}], "email,reason\n")
    result = run_cli("suppress", "import", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:{first}: reason: must be one printable line" in result.stderr
    if bad != "\x00":  # an argument cannot hold NUL
        typed = run_cli("suppress", "add", "s@example.com", "--reason", f"asked{bad}us")
        assert typed.exit_code == 2 and "--reason must be one printable line" in typed.stderr
    assert table_counts(engine) == before


def test_jsonl_ids_must_be_strings_and_keys_appear_once(run_cli: CliRun, engine: Engine,
                                                        write_file: Callable[..., Path]) -> None:
    base = {"email": "n@example.com", "name": "N", "locale": "en-US", "timezone": "America/New_York",
            "country": "US"}
    lines = [json.dumps({"account_id": 7, **base}),
             json.dumps({"account_id": ["a"], **base}),
             json.dumps({"account_id": True, **base}),
             '{"account_id": "a8", "account_id": "admin", "email": "m@example.com", "name": "M", '
             '"locale": "en-US", "timezone": "America/New_York", "country": "US"}',
             json.dumps({"account_id": "a9", **base, "name": 12})]
    path = write_file("accounts.jsonl", "\n".join(lines) + "\n")
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert f"{path}:1: account_id: expected a string, found a number" in err
    assert f"{path}:2: account_id: expected a string, found a list" in err
    assert f"{path}:3: account_id: expected a string, found true/false" in err
    assert f"{path}:4: the key 'account_id' appears twice in one object" in err
    assert f"{path}:5: name: expected a string, found a number" in err
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(0,)]
    dev = write_file("devices.jsonl", json.dumps({"device_id": 1, "account_id": "a1", "name": "K",
                                                  "model": "M", "voice_recordings": "x"}) + "\n")
    result = run_cli("import", "devices", str(dev))
    assert result.exit_code == 2 and f"{dev}:1: device_id: expected a string, found a number" in result.stderr


def test_jsonl_nested_deep_is_a_clear_error(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path]) -> None:
    deep = '{"account_id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_file("accounts.jsonl", GOOD_JSONL + deep + "\n")
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:2: not valid JSON: nested too deeply" in result.stderr
    assert "Traceback" not in result.output
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(0,)]


GOOD_JSONL = json.dumps({"account_id": "j1", "email": "j1@example.com", "name": "J", "locale": "de-AT",
                         "timezone": "Europe/Vienna", "country": "AT"}) + "\n"


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u00a0", "\ufeff"], ids=["RLO", "ZWSP", "NBSP", "BOM"])
def test_a_setting_value_is_printable_characters_only(run_cli: CliRun, engine: Engine,
                                                     write_file: Callable[..., Path], char: str) -> None:
    """A setting's value is a machine's word: no format character (a right-to-left override, a zero-width
    space) and no odd space, which a name may hold (a joiner in an emoji, a no-break space)."""
    assert run_cli("import", "accounts", str(write_file("ok.csv", GOOD))).exit_code == 0
    path = write_file("d.csv", "device_id,account_id,name,model,voice_recordings\n"
                               f"d1,a1,Kü{char}che,Echo Show 10,do_not{char}send\n")
    result = run_cli("import", "devices", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:2: voice_recordings: must be one printable line (contains U+{ord(char):04X}" in result.stderr
    assert "name:" not in result.stderr  # the name may hold it
    assert rows(engine, "SELECT COUNT(*) FROM device") == [(0,)]


def test_the_last_progress_report_says_the_whole_file_was_read(engine: Engine, write_file: Callable[..., Path]) -> None:
    """The final report came after the file was closed and read 0 bytes: '1,999,910 records (0%, …)' (issue 23)."""
    from campaign.intake import accounts
    rows = "".join(f"a{i},a{i}@example.com,Name {i},en-US,America/New_York,US\n" for i in range(12_000))
    path = write_file("many.csv", "account_id,email,name,locale,timezone,country\n" + rows)
    seen: list[tuple[int, int, int]] = []
    accounts.import_accounts(engine, path, "tester", progress=lambda n, done, total: seen.append((n, done, total)))
    assert len(seen) >= 2 and seen[-1] == (12_000, path.stat().st_size, path.stat().st_size)
    assert all(done <= total for _, done, total in seen)


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_import_waits_for_another_import(engine: Engine, write_file: Callable[..., Path]) -> None:
    # An import writes its new rows with a plain INSERT, having counted which are new (issue 26): two imports
    # at once must not both find an id new. Here a transaction holds the import's turn and writes a1 as an
    # import would; the import waits for it, then finds a1 existing (without the turn: a unique violation).
    import threading

    from campaign.intake.accounts import import_accounts
    from campaign.store import people

    path = write_file("accounts.csv", GOOD)
    outcome: list[object] = []
    with engine.connect() as other:
        other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": people.IMPORT_LOCK})
        other.execute(text("INSERT INTO account (id, email, name, locale, timezone, country, created_at, "
                           "updated_at) VALUES ('a1', 'anna@example.com', 'Anna Schmidt', 'de-DE', "
                           "'Europe/Berlin', 'DE', now(), now())"))

        def run() -> None:
            try:
                outcome.append(import_accounts(engine, path, "test"))
            except Exception as exc:  # reported below, in the test's thread
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(1.5)
        assert worker.is_alive() and not outcome, "the import did not wait for the other one's turn"
        other.commit()
    worker.join(30)
    assert not worker.is_alive()
    result = outcome[0]
    assert not isinstance(result, Exception), result
    assert (result.inserted, result.updated, result.unchanged) == (3, 0, 1)  # type: ignore[union-attr]
    assert rows(engine, "SELECT count(*) FROM account") == [(4,)]


def test_every_bad_setting_of_a_row_is_named(run_cli: CliRun, engine: Engine,
                                             write_file: Callable[..., Path]) -> None:
    # The settings of a row are checked all at once (issue 26); each bad one is still named on its own,
    # the good ones and the empty cells are not.
    assert run_cli("import", "accounts", str(write_file("ok.csv", GOOD))).exit_code == 0
    path = write_file("d.csv", "device_id,account_id,name,model,alpha,beta,gamma,delta\n"
                               f"d1,a1,Küche,Echo Show 10,{'x' * 128},,fine,ok\n"
                               f"d2,a1,Küche,Echo Show 10,{'x' * 129},,two\u200bparts,ok\n")
    result = run_cli("import", "devices", str(path))
    assert result.exit_code == 2, result.output
    assert (f"{path}:3: alpha: must be at most 128 characters (found 129); gamma: must be one printable "
            "line (contains U+200B") in result.stderr
    assert f"{path}:2:" not in result.stderr and "beta" not in result.stderr and "delta" not in result.stderr
    assert rows(engine, "SELECT COUNT(*) FROM device") == [(0,)]
