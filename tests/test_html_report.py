"""The HTML report in a real browser: headless Chromium (Debian's `chromium`) loads the page from a file, with
nothing else to load and no script to run; we read back the DOM it built, a screenshot (a tiny PNG reader
checks its size and that the charts' colours are on it) and a PDF through the print stylesheet.

Skipped when Chromium is not installed, except under CI=true, where it fails (`.ci/run` installs it)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import IN_CI, CliRun
from tests.test_reports import SLUG, story  # noqa: F401  (the fixture: every kind of story, flipped)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
# Colours the page draws with (campaign.htmlreport): the first wave, sent, the cutoff.
EXPECTED = {"first wave": (0x15, 0x65, 0xC0), "sent": (0x2E, 0x7D, 0x32), "cutoff": (0xC6, 0x28, 0x28)}


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if IN_CI:
            pytest.fail("CI=true but chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def browse(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one each time
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=True)


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit truecolour PNG, filters undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows] if bpp == 3 else [
        b"".join(r[i:i + 3] for i in range(0, len(r), 4)) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the page, not the database, is under test here
def test_chromium_renders_the_report(chromium: str, run_cli: CliRun, story: Engine,  # noqa: F811
                                     tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = run_cli("report", SLUG, "--format", "html", "--out", str(page))
    assert result.exit_code == 0, result.output

    # The DOM Chromium built: every section, the chart with its bars, the escaped actor as text.
    dom = browse(chromium, tmp_path, "--dump-dom", page.as_uri()).stdout
    for title in ("Sends over time", "Outcomes by wave", "Outcomes by locale", "The flip", "Timeline"):
        assert f"<h2>{title}</h2>" in dom
    assert len(re.findall(r"<rect\b", dom)) == 3  # the notices (early and late), the reminder
    assert "The cutoff" in dom and "&lt;img src=x" in dom and "<img" not in dom
    assert "<script" not in dom

    # The screenshot: the page's size, a page with many colours, and the charts' own colours on it.
    shot = tmp_path / "report.png"
    browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
           page.as_uri())
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    pixels = {row[i:i + 3] for row in rows[::2] for i in range(0, len(row), 6)}
    assert len(pixels) > 50, "the screenshot is nearly blank"
    everything = b"".join(rows)
    for name, rgb in EXPECTED.items():
        assert bytes(rgb) in everything, f"no {name} colour #{bytes(rgb).hex()} on the screenshot"
    # The top rows are the page's background, not white: the stylesheet applied.
    assert rows[2][:3] == bytes((0xEE, 0xF1, 0xF5))

    # On paper: the print stylesheet gives a PDF of a few pages.
    pdf = tmp_path / "report.pdf"
    browse(chromium, tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF-") and 1 <= len(re.findall(rb"/Type\s*/Page\b", body)) <= 6
