"""The seeded sample data: reproducible, well-formed, and the shipped example is exactly what it generates."""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaign import sample
from campaign.validation import check_email, check_timezone, normalize_country, normalize_locale

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

# Which country each locale's accounts may live in, and which zones: the pairs the generator promises.
ZONES = {
    "US": {"America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Phoenix",
           "America/Anchorage", "Pacific/Honolulu"},
    "CA": {"America/Toronto", "America/Vancouver"},
    "GB": {"Europe/London"}, "DE": {"Europe/Berlin"}, "AT": {"Europe/Vienna"}, "JP": {"Asia/Tokyo"},
    "FR": {"Europe/Paris"}, "BR": {"America/Sao_Paulo"},
}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def read_jsonl(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample.write_csv(tmp_path_factory.mktemp("sample"), 1500, seed=11)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = sample.write_csv(tmp_path / "a", 300, seed=3)
    b = sample.write_csv(tmp_path / "b", 300, seed=3)
    c = sample.write_csv(tmp_path / "c", 300, seed=4)
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()


def test_generate_streams_match_the_files(tmp_path: Path) -> None:
    accounts, devices = sample.generate(200, seed=5)
    acc_path, dev_path = sample.write_csv(tmp_path, 200, seed=5)
    assert [tuple(r.values()) for r in read_csv(acc_path)[1]] == list(accounts)
    assert [tuple(r.values()) for r in read_csv(dev_path)[1]] == list(devices)


def test_columns_header_first_utf8_lf(generated: tuple[Path, Path]) -> None:
    acc_path, dev_path = generated
    assert read_csv(acc_path)[0] == ["account_id", "email", "name", "locale", "timezone", "country"]
    assert read_csv(dev_path)[0] == ["device_id", "account_id", "name", "model", "voice_recordings"]
    for path in generated:
        raw = path.read_bytes()
        assert b"\r" not in raw
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert raw.endswith(b"\n")
        raw.decode("utf-8")


def test_accounts_are_valid(generated: tuple[Path, Path]) -> None:
    _, rows = read_csv(generated[0])
    assert len(rows) == 1500
    for row in rows:
        assert normalize_locale(row["locale"]) == row["locale"]
        assert check_timezone(row["timezone"]) == row["timezone"]
        assert normalize_country(row["country"]) == row["country"]
        assert check_email(row["email"]) == row["email"]
        assert row["email"].rsplit("@", 1)[1] in {"example.com", "example.org", "example.net"}
        assert row["name"].strip() == row["name"] and row["name"]
        # Locale, country and zone agree with one another.
        assert row["locale"].split("-")[1] == row["country"]
        assert row["timezone"] in ZONES[row["country"]]
    assert len({r["account_id"] for r in rows}) == len(rows)
    assert len({r["email"] for r in rows}) == len(rows)
    assert [r["account_id"] for r in rows][:2] == ["acc-000001", "acc-000002"]


def test_devices_are_valid_and_belong_to_accounts(generated: tuple[Path, Path]) -> None:
    accounts = {r["account_id"] for r in read_csv(generated[0])[1]}
    _, devices = read_csv(generated[1])
    per_account: dict[str, int] = {}
    for d in devices:
        assert d["account_id"] in accounts
        assert d["name"] and d["model"] in sample.MODELS.items
        assert d["voice_recordings"] in {"do_not_send", "dont_save", "save"}
        per_account[d["account_id"]] = per_account.get(d["account_id"], 0) + 1
    assert len({d["device_id"] for d in devices}) == len(devices)
    assert devices[0]["device_id"] == "dev-0000001"
    assert set(per_account) == accounts  # every account owns at least one device
    assert max(per_account.values()) <= 4
    assert 1.45 < len(devices) / len(accounts) < 1.75
    share = sum(d["voice_recordings"] == "do_not_send" for d in devices) / len(devices)
    assert 0.40 < share < 0.50


def test_names_exercise_quoting_and_unicode(generated: tuple[Path, Path]) -> None:
    names = [r["name"] for r in read_csv(generated[0])[1]]
    assert any("," in n for n in names)
    assert any('"' in n for n in names)
    assert any("'" in n for n in names)
    assert any(ch in n for n in names for ch in "äöüß")
    assert any(ch in n for n in names for ch in "áéíóúñ")
    assert any("\u4e00" <= ch <= "\u9fff" for n in names for ch in n)


def test_ids_widen_with_the_count() -> None:
    assert sample.id_widths(500) == (6, 7)
    assert sample.id_widths(1_000_000) == (7, 7)
    assert sample.id_widths(10_000_000) == (8, 8)
    accounts, devices = sample.generate(0)
    assert list(accounts) == [] and list(devices) == []
    with pytest.raises(ValueError):
        sample.write_csv(Path("unused"), 1, fmt="xml")


def test_jsonl_has_the_same_records_as_csv(tmp_path: Path) -> None:
    csv_paths = sample.write_csv(tmp_path, 400, seed=9)
    jsonl_paths = sample.write_csv(tmp_path, 400, seed=9, fmt="jsonl")
    assert [p.name for p in jsonl_paths] == ["accounts.jsonl", "devices.jsonl"]
    for csv_path, jsonl_path in zip(csv_paths, jsonl_paths, strict=True):
        columns, rows = read_csv(csv_path)
        records = list(read_jsonl(jsonl_path))
        assert records == rows
        assert all(list(r) == columns for r in records)  # same keys, same order, settings at top level


def test_shipped_example_is_reproducible(tmp_path: Path) -> None:
    """data/accounts.csv and data/devices.csv are `python -m campaign.sample --accounts 500 --out data`."""
    acc_path, dev_path = sample.write_csv(tmp_path, 500, seed=7)
    assert (DATA / "accounts.csv").read_bytes() == acc_path.read_bytes()
    assert (DATA / "devices.csv").read_bytes() == dev_path.read_bytes()


def test_shipped_example_has_an_audience_and_accounts_outside_it() -> None:
    definition = tomllib.loads((DATA / "voice-local-processing.toml").read_text(encoding="utf-8"))
    countries = set(definition["audience"]["countries"])
    models = set(definition["audience"]["device_models"])
    from_value = definition["migration"]["from"]
    accounts = {r["account_id"]: r for r in read_csv(DATA / "accounts.csv")[1]}
    devices = read_csv(DATA / "devices.csv")[1]
    affected = [d for d in devices if d["voice_recordings"] == from_value and d["model"] in models
                and accounts[d["account_id"]]["country"] in countries]
    affected_accounts = {d["account_id"] for d in affected}
    assert len(affected) >= 200
    assert 100 <= len(affected_accounts) <= len(accounts) - 100
    # The filters matter: some do_not_send devices are left out by country and some by model.
    left_out = [d for d in devices if d["voice_recordings"] == from_value and d not in affected]
    assert any(accounts[d["account_id"]]["country"] not in countries for d in left_out)
    assert any(d["model"] not in models for d in left_out)
    assert {r["locale"] for r in accounts.values()} >= {"en-US", "es-US", "de-DE", "de-AT", "ja-JP"}


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample.main(["--accounts", "20", "--out", str(tmp_path / "out"), "--seed", "2",
                        "--format", "jsonl"]) == 0
    assert "accounts.jsonl" in capsys.readouterr().out
    assert len(list(read_jsonl(tmp_path / "out" / "accounts.jsonl"))) == 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["accounts.jsonl", "devices.jsonl"]
    with pytest.raises(SystemExit) as exc:
        sample.main(["--accounts", "-1", "--out", str(tmp_path)])
    assert exc.value.code == 2
