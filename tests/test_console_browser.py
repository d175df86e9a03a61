"""The console in a real browser (issue 24 item 4): Playwright's sync API driving Debian's chromium against the
real server on loopback, on SQLite and PostgreSQL — a viewer sees and has nothing to press, the author is told
their approval must come from someone else, an approver approves and the command line's `status` shows it, and
support finds a person by email. Each person's token travels in the header a proxy would add. Without chromium
or Playwright these skip locally, and fail under CI=true (.ci/run)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import IN_CI, CliRun
from tests.consoled import Issuer, serving
from tests.test_console import APPROVER, AUTHOR, SLUG, SUPPORT, VIEWER, console_config, created  # noqa: F401

pytestmark = pytest.mark.slow


def _missing(why: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {why}: the console's browser tests must run in CI (.ci/run)")
    pytest.skip(why)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def console(db_url: str, engine: Engine, created: None, tmp_path: Path) -> Iterator[tuple[str, Issuer]]:  # noqa: F811
    issuer = Issuer()
    with serving(console_config(db_url, str(issuer.write_jwks(tmp_path / "jwks.json"))), engine) as server:
        yield server.url, issuer


def page_as(browser: Any, issuer: Issuer, email: str, *groups: str) -> Any:
    """A browser page whose every request carries the person's token, as the proxy in front would add it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  extra_http_headers={"Authorization": f"Bearer {issuer.token(email, list(groups))}"})
    return context.new_page()


def test_viewer_author_and_approver_in_a_browser(browser: Any, console: tuple[str, Issuer], run_cli: CliRun,
                                                 tmp_path: Path) -> None:
    url, issuer = console
    viewer = page_as(browser, issuer, VIEWER, "staff")
    viewer.goto(f"{url}/")
    with viewer.expect_navigation():
        viewer.click(f"a[href='/campaigns/{SLUG}']")
    assert viewer.url.endswith(f"/campaigns/{SLUG}")
    assert "Was everyone told in time?" in viewer.inner_text("main")
    assert viewer.locator("form[method=post]").count() == 0  # nothing to press
    assert viewer.locator("text=People").count() == 0  # not support
    shot = tmp_path / "campaign.png"
    viewer.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    author = page_as(browser, issuer, AUTHOR)
    author.goto(f"{url}/campaigns/{SLUG}")
    assert "its approval must come from someone else" in author.inner_text("main")
    assert author.locator("button", has_text="Approve version").count() == 0

    approver = page_as(browser, issuer, APPROVER, "privacy")
    approver.goto(f"{url}/campaigns/{SLUG}/review")
    assert "Jane Doe" in approver.inner_text("main")
    with approver.expect_navigation():
        approver.click("button:has-text('Approve version 1')")
    assert approver.url.endswith(f"/campaigns/{SLUG}?did=approved")
    assert "Approved: your approval is recorded" in approver.inner_text("main")
    assert APPROVER in approver.inner_text("main")  # the approvals table names them
    standing = json.loads(run_cli("status", SLUG, "--json").stdout)["approval"]
    assert standing["approved"] is True and [a["by"] for a in standing["approvals"]] == [APPROVER]


def test_support_finds_a_person_by_email_in_a_browser(browser: Any, console: tuple[str, Issuer]) -> None:
    url, issuer = console
    support = page_as(browser, issuer, SUPPORT, "support")
    support.goto(f"{url}/")
    with support.expect_navigation():
        support.click("nav >> text=People")
    support.fill("input[name=q]", "user2@example.com")
    with support.expect_navigation():
        support.click("button:has-text('Find')")
    text = support.inner_text("main")
    assert f"{SLUG}: User 2 <user2@example.com>" in text
    assert "account a002" in text
    nobody = page_as(browser, issuer, VIEWER, "staff")
    response = nobody.goto(f"{url}/people?q=user2@example.com")
    assert response is not None and response.status == 403
