"""The HTML report in a real browser: headless Chromium (Debian's `chromium`) loads the page from a file, with
nothing else to load and no script to run; we read back the DOM it built, a screenshot (a tiny PNG reader
checks its size and that the charts' colours are on it) and a PDF through the print stylesheet.

Skipped when Chromium is not installed, except under CI=true, where it fails (`.ci/run` installs it)."""

from __future__ import annotations

import fnmatch
import importlib.resources
import re
import shutil
import struct
import subprocess
import tomllib
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jinja2
import pytest
from sqlalchemy import Engine

from campaign import pages
from campaign.evidence import htmlreport
from tests.conftest import IN_CI, ROOT, CliRun
from tests.test_reports import SLUG, story  # noqa: F401  (the fixture: every kind of story, flipped)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
# Colours the page draws with (campaign.evidence.htmlreport): the first wave, sent, the cutoff.
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
    """Headless chromium, once more if it hangs: `--screenshot` with a virtual time budget now and then never ends
    on a loaded machine (seen once in CI: 120 s; the same run takes 5 s alone). The screenshot is checked as ever."""
    for attempt in (1, 2):
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one each time
        try:
            return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                  text=True, timeout=90, check=True)
        except subprocess.TimeoutExpired:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


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


# Every character that means something in HTML, in text and in a quoted attribute.
HOSTILE = """<script>alert("x") & 'y'</script>"""
REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "footer", "section", "h1", "h2",
               "h3", "p", "b", "i", "code", "small", "div", "span", "ul", "ol", "li", "time", "table", "thead",
               "tbody", "tr", "th", "td", "svg", "line", "rect", "text", "polyline", "dl", "dt", "dd"}


class Page(HTMLParser):
    """What a browser makes of a page: its elements with their attributes, and its text, entities decoded."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attribute_values(self) -> list[str]:
        return [v for _, attrs in self.tags for v in attrs.values() if v is not None]


def assert_escaped(page: str, allowed_tags: set[str], in_text: int, in_attributes: int) -> Page:
    """`HOSTILE` is on the page as text only: at least `in_text` times in the text and `in_attributes` times
    inside attribute values, whole; no element or attribute came of it."""
    parsed = Page(page)
    assert {tag for tag, _ in parsed.tags} <= allowed_tags
    assert not [name for _, attrs in parsed.tags for name in attrs if name.startswith("on")]
    assert "".join(parsed.text).count(HOSTILE) >= in_text
    assert sum(v.count(HOSTILE) for v in parsed.attribute_values()) >= in_attributes
    assert "<script" not in page and HOSTILE not in page
    return parsed


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_hostile_data_is_escaped_everywhere_on_the_report(story: Engine) -> None:  # noqa: F811
    with story.connect() as conn:
        data: dict[str, Any] = htmlreport.html_data(conn, SLUG)
    for key in ("name", "campaign", "setting", "from", "to", "created_by", "state"):
        data[key] = HOSTILE
    first = data["waves"][0]["name"]
    data["waves"][0].update(name=HOSTILE, audience=HOSTILE, paused_reason=HOSTILE)
    for s in data["sends"]:
        s["wave"] = HOSTILE if s["wave"] == first else s["wave"]
    data["by_locale"] = {HOSTILE: {HOSTILE: {"sent": 1, HOSTILE: 2}}}
    data["held_back_why"] = {HOSTILE: 2}
    data["steps"] = [{"step": HOSTILE, "state": "pending", "due_at": data["cutoff"]}]
    data["events"][-1].update(actor=HOSTILE, action=HOSTILE, detail={"error": HOSTILE})
    data["events"][0]["detail"].update(source=HOSTILE, waves=[HOSTILE])
    data["approval"].update(required=True, digest=HOSTILE, defined_by=HOSTILE,
                            approvals=[{"by": HOSTILE, "at": data["cutoff"]}])
    page = htmlreport.render(data)
    # In the text: the title, eyebrow, heading, lede (setting, from, to), the state line (state, creator, approver,
    # author, digest), the coverage's words, the charts' due lines and bars and keys, the wave's heading, line and
    # table row, the locale table, the flip's tiles and notes, the timeline (an unknown action and its detail, a
    # creation's file and waves). In an attribute: the locale cell's other outcomes.
    assert_escaped(page, REPORT_TAGS, in_text=25, in_attributes=1)


def test_the_pages_environment_is_strict_autoescaped_and_built_once() -> None:
    env = pages.environment()
    assert pages.environment() is env and env.undefined is jinja2.StrictUndefined and not env.auto_reload
    autoescape = env.autoescape
    assert callable(autoescape) and autoescape("report.html.j2") and autoescape("gallery.html.j2")
    assert not autoescape("report.css")  # included as it is: our own stylesheet, no data in it
    with pytest.raises(jinja2.UndefinedError, match="report"):
        pages.render("report.html.j2")


def test_the_pages_are_package_data() -> None:
    """A non-editable install carries the templates: pyproject's package-data names every file of
    campaign/pages, and the loader finds each template the code renders through importlib.resources."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["campaign"]
    folder = importlib.resources.files("campaign") / "pages"
    names = {f.name for f in folder.iterdir() if f.is_file() and not f.name.endswith((".py", ".pyc"))}
    assert {"report.html.j2", "report.css", "gallery.html.j2"} <= names
    assert [n for n in names if not any(fnmatch.fnmatch(f"pages/{n}", g) for g in globs)] == []
    assert names <= set(pages.environment().list_templates())


def test_no_html_is_escaped_by_hand() -> None:
    """HTML is escaped by Jinja2's autoescape alone: no code of the package escapes by hand or marks a string
    safe, and no template of the pages turns autoescape off or marks a value safe."""
    by_hand = re.compile(r"\bhtml\.escape\b|\bimport html\b|\bfrom html import\b|\bmarkupsafe\b|\bMarkup\b")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in sorted((ROOT / "campaign").rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if by_hand.search(line)]
    assert found == []
    unsafe = re.compile(r"\|\s*safe\b|autoescape\s+false|\bMarkup\b", re.IGNORECASE)
    found = [f"{path.name}:{n}" for path in sorted((ROOT / "campaign" / "pages").glob("*.j2"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]
    assert found == []
