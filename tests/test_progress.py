"""Progress of long work: a bar on a terminal, plain lines at intervals otherwise."""

from __future__ import annotations

import pytest

from campaign.cli import Progress


def test_plain_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress("importing a.csv", "records", interval=0.0)
    bar.update(50, 200, 1000)
    bar.update(200, 200, 4000)
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("importing a.csv: 1,000 records (25%")
    assert err[1].startswith("importing a.csv: 4,000 records (100%")


def test_quiet_within_the_interval_and_when_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress("send", "deliveries", interval=3600)
    bar.update(1, 10)
    off = Progress("send", "deliveries", enabled=False, interval=0.0)
    off.update(1, 10)
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = Progress("voice / notice", "deliveries")
    bar.update(5, 10)
    bar.update(10, 10)
    bar.close()
    err = capsys.readouterr().err
    assert "voice / notice" in err and "100%" in err
