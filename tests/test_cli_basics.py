"""The command line's front: help without a database, schema checks, configuration precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from campaign.cli import cli
from campaign.config import load_config


def test_help_needs_no_database(tmp_path: Path) -> None:
    # A URL that cannot be opened: --help must not touch it.
    env = {"CAMPAIGN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    for args in (["--help"], ["import", "accounts", "--help"], ["create", "--help"], ["db", "--help"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "campaign", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert "Retire a user-facing setting" in out.stdout


def test_command_on_database_without_schema_says_what_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = CliRunner().invoke(cli, ["list"], env={"CAMPAIGN_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "campaign db upgrade" in result.stderr
    assert "Traceback" not in result.output


def test_db_upgrade_then_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = CliRunner().invoke(cli, ["db", "upgrade"], env={"CAMPAIGN_DATABASE_URL": url})
    assert first.exit_code == 0, first.output
    assert "empty ->" in first.stdout
    second = CliRunner().invoke(cli, ["db", "upgrade"], env={"CAMPAIGN_DATABASE_URL": url})
    assert second.exit_code == 0
    assert "already at" in second.stdout


def test_bad_database_url_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["list"], env={"CAMPAIGN_DATABASE_URL": "mysql://x@127.0.0.1/db"})
    assert result.exit_code == 2
    assert "unsupported database" in result.stderr


def test_config_precedence(tmp_path: Path) -> None:
    (tmp_path / "campaign.toml").write_text('database_url = "sqlite:///from-file.db"\n'
                                            'templates = "file-templates"\nactor = "file-actor"\n')
    cfg = load_config({}, {}, tmp_path)
    assert cfg.database_url == "sqlite:///from-file.db" and cfg.actor == "file-actor"
    cfg = load_config({}, {"CAMPAIGN_DATABASE_URL": "sqlite:///env.db"}, tmp_path)
    assert cfg.database_url == "sqlite:///env.db" and str(cfg.templates) == "file-templates"
    cfg = load_config({"database_url": "sqlite:///opt.db"}, {"CAMPAIGN_DATABASE_URL": "sqlite:///env.db"},
                      tmp_path)
    assert cfg.database_url == "sqlite:///opt.db"


def test_config_file_refuses_password_and_unknown_keys(tmp_path: Path) -> None:
    import pytest

    from campaign.errors import ConfigError
    (tmp_path / "campaign.toml").write_text('smtp_password = "hunter2"\n')
    with pytest.raises(ConfigError, match="CAMPAIGN_SMTP_PASSWORD"):
        load_config({}, {}, tmp_path)
    (tmp_path / "campaign.toml").write_text('databse_url = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'databse_url' — did you mean `database_url`") as info:
        load_config({}, {}, tmp_path)
    # The keys it lists are those a file may hold: not smtp_password, which it would then refuse (issue 23).
    known = str(info.value).split("known here: ")[1]
    assert "database_url" in known and "smtp_password" not in known.split(";")[0]


def test_password_never_in_repr() -> None:
    cfg = load_config({}, {"CAMPAIGN_SMTP_PASSWORD": "s3cret-pw", "CAMPAIGN_DATABASE_URL":
                           "postgresql+psycopg://u:dbpass@127.0.0.1/x"}, Path("/nonexistent"))
    assert cfg.smtp_password == "s3cret-pw"
    assert "s3cret-pw" not in repr(cfg) and "dbpass" not in repr(cfg)


def test_a_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{missing}", "list"])
    assert result.exit_code == 1
    assert f"no database at {missing}" in result.stderr and "campaign db upgrade" in result.stderr
    assert not missing.exists()


def test_a_database_in_a_folder_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """SQLite says 'unable to open database file' (issue 23 item 5); we name the folder."""
    inside = tmp_path / "no" / "such" / "folder" / "c.db"
    for args in (["db", "upgrade"], ["list"]):
        result = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{inside}", *args])
        assert result.exit_code == 2, result.output
        assert f"no folder {inside.parent} for the database" in result.stderr and "mkdir -p" in result.stderr
        assert "unable to open" not in result.stderr and not inside.parent.exists()


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql+psycopg://u:secret-pw@127.0.0.1:notaport/db", "its host or port is not valid"),
    ("postgresql+psycopg://u@127.0.0.1:99999/db", "port 99999 is not from 1 to 65535"),
    ("postgresql+psycopg://u@[::1/db", "its host or port is not valid"),
    ("not a url at all", "expected sqlite:///PATH"),
])
def test_a_bad_database_url_is_a_clear_error(url: str, says: str | None, tmp_path: Path) -> None:
    """Issue 21 item 10: a database URL that cannot be read is exit 2 with what is wrong, never a traceback,
    and its password is not shown."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url}
    for args in (["list"], ["db", "upgrade"]):
        done = subprocess.run([sys.executable, "-m", "campaign", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        assert "secret-pw" not in done.stderr + done.stdout
        if says is not None:
            assert done.returncode == 2, done.stderr
            assert says in done.stderr
