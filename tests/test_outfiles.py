"""`--out` writes what it names and nothing else (G12), on SQLite and PostgreSQL: `report --out FILE` replaces a
regular file whole, writes through a FIFO or a character device, refuses a directory and a symbolic link (other
than to its own standard output or a pipe), and never follows a link planted at its temporary file's name;
`preview --out DIR` writes its gallery's files by the same rules. Every refusal is exit 2 naming the path."""

from __future__ import annotations

import errno
import os
import select
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from campaign import outfiles
from campaign.evidence import export
from tests.conftest import ROOT, CliRun
from tests.test_reports import ACCOUNTS, DEVICES, EARLY, SLUG, definition, deliver

PRECIOUS = "someone else's file\n"


@pytest.fixture
def campaign(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path], tmp_path: Path) -> Engine:
    """The reports' campaign, its notice sent to four accounts."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path))).exit_code == 0
    deliver(engine, [(a, "notice", "sent", EARLY, None) for a in ("a00000", "a00001", "a00003", "a00004")])
    return engine


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def expected(run_cli: CliRun, fmt: str = "csv") -> str:
    result = run_cli("report", SLUG, "--format", fmt)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes.decode("utf-8")  # as written: CRLF line ends in CSV


def refused(result: object, path: Path, words: str) -> None:
    """Exit 2, one line on stderr naming the path and why, no traceback."""
    from click.testing import Result
    assert isinstance(result, Result)
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_a_regular_file_is_replaced_whole(run_cli: CliRun, campaign: Engine, out_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    report = out_dir / "report.csv"
    report.write_text("the report of yesterday\n", encoding="utf-8")
    mine = out_dir / "report.csv.partial"  # the user's own file, at the name the partial file once had
    mine.write_text(PRECIOUS, encoding="utf-8")
    result = run_cli("report", SLUG, "--out", str(report))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{SLUG}: 4 accounts written to {report}\n"
    assert report.read_bytes().decode("utf-8") == expected(run_cli)
    assert mine.read_text(encoding="utf-8") == PRECIOUS
    assert sorted(os.listdir(out_dir)) == ["report.csv", "report.csv.partial"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~umask  # the mode of any new file

    # A report that fails midway (the disk full, the database gone) leaves the file as it was.
    before = report.read_bytes()

    def fails(out: object, rows: Iterator[object], *args: object) -> None:
        assert hasattr(out, "write")
        out.write("account_id,email\r\n" * 10_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_csv", fails)
    result = run_cli("report", SLUG, "--out", str(report))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{report}: could not write it (No space left on device)" in result.stderr
    assert report.read_bytes() == before
    assert sorted(os.listdir(out_dir)) == ["report.csv", "report.csv.partial"]


def test_a_directory_is_refused(run_cli: CliRun, campaign: Engine, out_dir: Path) -> None:
    target = out_dir / "reports"
    target.mkdir()
    refused(run_cli("report", SLUG, "--out", str(target)), target, "directory")
    # The core says so too (the demo's HTML report, a directory made after the option was checked).
    with pytest.raises(export.UsageError, match=f"{target} is a directory"):
        export.report(campaign, SLUG, "csv", target, sys.stdout)
    assert os.listdir(target) == [] and sorted(os.listdir(out_dir)) == ["reports"]


def test_a_symlink_at_the_target_is_refused_and_its_target_untouched(run_cli: CliRun, campaign: Engine,
                                                                      out_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS, encoding="utf-8")
    link = out_dir / "report.csv"
    link.symlink_to(victim)
    refused(run_cli("report", SLUG, "--out", str(link)), link, "symbolic link")
    assert victim.read_text(encoding="utf-8") == PRECIOUS
    assert link.is_symlink() and os.readlink(link) == str(victim)
    # A link to nothing: refused too, and nothing is created where it points.
    dangling = out_dir / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere.csv")
    refused(run_cli("report", SLUG, "--format", "html", "--out", str(dangling)), dangling, "symbolic link")
    assert not (tmp_path / "nowhere.csv").exists() and dangling.is_symlink()
    assert sorted(os.listdir(out_dir)) == ["dangling.csv", "report.csv"]


def test_a_link_planted_at_the_temporary_name_is_not_followed(run_cli: CliRun, campaign: Engine, out_dir: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS, encoding="utf-8")
    report = out_dir / "report.csv"
    # The name the partial file used to have, predictable: someone plants a link there.
    old = out_dir / "report.csv.partial"
    old.symlink_to(victim)
    result = run_cli("report", SLUG, "--out", str(report))
    assert result.exit_code == 0, result.output
    assert victim.read_text(encoding="utf-8") == PRECIOUS and old.is_symlink()
    assert not report.is_symlink() and report.read_bytes().decode("utf-8") == expected(run_cli)
    # Today's name is random; even guessed and planted, it is created exclusively: another name is drawn.
    tokens = iter(["guessed", "fresh"])
    monkeypatch.setattr(outfiles, "_token", lambda: next(tokens))
    guessed = out_dir / ".report.csv.guessed.partial"
    guessed.symlink_to(victim)
    result = run_cli("report", SLUG, "--format", "jsonl", "--out", str(report))
    assert result.exit_code == 0, result.output
    assert victim.read_text(encoding="utf-8") == PRECIOUS and guessed.is_symlink()
    assert report.read_bytes().decode("utf-8") == expected(run_cli, "jsonl")
    assert sorted(os.listdir(out_dir)) == [".report.csv.guessed.partial", "report.csv", "report.csv.partial"]


class Reader:
    """Reads a FIFO in a thread until the command is over and its writer gone: what came through."""

    def __init__(self, fifo: Path) -> None:
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened first: the writer does not wait for it
        self.over = threading.Event()
        self.got = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            select.select([self.fd], [], [], 0.05)
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                self.got += chunk
            elif self.over.is_set():  # no writer now, and none to come
                return
            else:
                time.sleep(0.01)

    def result(self) -> str:
        self.over.set()
        self.thread.join(10)
        os.close(self.fd)
        assert not self.thread.is_alive()
        return self.got.decode("utf-8")


def test_a_fifo_is_written_through(run_cli: CliRun, campaign: Engine, out_dir: Path) -> None:
    fifo = out_dir / "report.fifo"
    os.mkfifo(fifo)
    reader = Reader(fifo)
    result = run_cli("report", SLUG, "--out", str(fifo))
    got = reader.result()
    assert result.exit_code == 0, result.output
    assert got == expected(run_cli) and got.count("\r\n") == 5  # the header and four accounts
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # Through a link to it (a shell's `--out >(gzip > r.csv.gz)` gives /dev/fd/63, a link to a pipe).
    link = out_dir / "fd63"
    link.symlink_to(fifo)
    reader = Reader(fifo)
    result = run_cli("report", SLUG, "--format", "jsonl", "--out", str(link))
    assert result.exit_code == 0, result.output
    assert reader.result() == expected(run_cli, "jsonl")
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(out_dir)) == ["fd63", "report.fifo"]


def test_a_character_device_is_written_through(run_cli: CliRun, campaign: Engine, out_dir: Path) -> None:
    if os.geteuid() == 0:  # a null device of the test's own first: the machine's /dev/null is not put at risk
        null = out_dir / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        result = run_cli("report", SLUG, "--out", str(null))
        assert result.exit_code == 0, result.output
        st = os.lstat(null)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert sorted(os.listdir(out_dir)) == ["null"]
        # A device that fails every write (/dev/full): a message, no traceback.
        full = out_dir / "full"
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        result = run_cli("report", SLUG, "--out", str(full))
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"{full}: could not write it (No space left on device)" in result.stderr
        assert stat.S_ISCHR(os.lstat(full).st_mode)
        # Behind a link, a device is refused (only a pipe or the command's own output is written through one).
        link = out_dir / "link"
        link.symlink_to(null)
        refused(run_cli("report", SLUG, "--out", str(link)), link, "symbolic link")
    before = os.stat(os.devnull)
    result = run_cli("report", SLUG, "--format", "html", "--out", os.devnull)
    assert result.exit_code == 0, result.output
    after = os.lstat(os.devnull)
    assert stat.S_ISCHR(after.st_mode) and (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)
    assert not [n for n in os.listdir(Path(os.devnull).parent) if n.startswith(".null.")]


def test_dev_stdout_is_the_commands_own_output(run_cli: CliRun, campaign: Engine, db_url: str,
                                               out_dir: Path) -> None:
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "tester",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    want = expected(run_cli)

    def run(out: str, stdout: int | object = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "campaign", "report", SLUG, "--out", out], env=env,
                              stdout=stdout, stderr=subprocess.PIPE, timeout=60, check=False)

    # /dev/fd/1 first: were it replaced rather than written through, it could not be (in /proc).
    for out in ("/dev/fd/1", "/dev/stdout"):
        done = run(out)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode("utf-8") == want and done.stderr == b""  # the report and nothing else
    assert os.path.islink("/dev/stdout")
    # Standard output sent to a file: the file gets the report.
    saved = out_dir / "saved.csv"
    with saved.open("wb") as f:
        done = run("/dev/stdout", f)
    assert done.returncode == 0, done.stderr
    assert saved.read_bytes().decode("utf-8") == want


def test_the_gallery_writes_regular_files_only(run_cli: CliRun, campaign: Engine, out_dir: Path,
                                               tmp_path: Path) -> None:
    gallery = out_dir / "gallery"
    result = run_cli("preview", SLUG, "--out", str(gallery))
    assert result.exit_code == 0, result.output
    names = sorted(os.listdir(gallery))
    assert "index.html" in names and "notice.en-US.eml" in names and not [n for n in names if n.startswith(".")]
    # Again, over itself: each file replaced.
    assert run_cli("preview", SLUG, "--out", str(gallery)).exit_code == 0
    assert sorted(os.listdir(gallery)) == names

    # A link planted at one of its names: refused before anything is written, the link's target untouched.
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS, encoding="utf-8")
    fresh = out_dir / "fresh"
    fresh.mkdir()
    (fresh / "notice.en-US.eml").symlink_to(victim)
    refused(run_cli("preview", SLUG, "--out", str(fresh)), fresh / "notice.en-US.eml", "symbolic link")
    assert victim.read_text(encoding="utf-8") == PRECIOUS
    assert os.listdir(fresh) == ["notice.en-US.eml"] and (fresh / "notice.en-US.eml").is_symlink()
    # A directory at one of its names: the same.
    (fresh / "notice.en-US.eml").unlink()
    (fresh / "index.html").mkdir()
    refused(run_cli("preview", SLUG, "--out", str(fresh)), fresh / "index.html", "directory")
    assert os.listdir(fresh) == ["index.html"]

    # The directory itself a link (planted where the gallery was to go): refused, nothing written behind it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = out_dir / "linked"
    linked.symlink_to(elsewhere)
    refused(run_cli("preview", SLUG, "--out", str(linked)), linked, "symbolic link")
    assert os.listdir(elsewhere) == []
