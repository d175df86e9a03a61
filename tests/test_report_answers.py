"""The HTML report answers the question (issue 23 item 7), on SQLite and PostgreSQL, through the CLI: it leads with
who of the affected people was told before the cutoff and in time — the very figures of `status --json`'s
notice_coverage, a late bounce lowering them — shows `done` once the scheduler has run every step, plots the flip
over time with as many devices as the flip switched (and rolled back), and tells its timeline in sentences: no
`key=value`, no whole digest. Every page is well-formed."""

from __future__ import annotations

import json
import mailbox
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from campaign.evidence import sentences
from tests import bounce_mail as bm
from tests.conftest import ROOT, CliRun
from tests.smtpd import SmtpServer
from tests.test_reports import HOSTILE, SLUG, story  # noqa: F401  (the fixture: every kind of story, flipped)

KEY = "0123456789abcdef0123456789abcdef-test-key"
N = 5
ACCOUNTS = "account_id,email,name,locale,timezone,country\n" + "".join(
    f"a{i},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(N))
DEVICES = "device_id,account_id,name,model,voice_recordings\n" + "".join(
    f"d{i},a{i},Room {i},Echo Show 10,do_not_send\n" for i in range(N))
VOID = {"meta", "br", "hr", "img", "input", "link"}
KEY_VALUE = re.compile(r"\b\w+=\S")
WHOLE_DIGEST = re.compile(r"[0-9a-f]{64}")


class Parsed(HTMLParser):
    """The page as a browser reads it: well-formed (every element closed in order), its text by element, the
    tiles' figures (`data-figure`) and the flip chart's running totals (`data-total` of each line)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.figures: dict[str, str] = {}
        self.totals: list[int] = []
        self.timeline: list[str] = []
        self.text: list[str] = []
        self._figure: str | None = None
        self._in_timeline = 0
        self.feed(page)
        self.close()
        assert self.stack == [], f"elements left open: {self.stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if a.get("data-figure"):
            self._figure = a["data-figure"]
        if tag == "polyline" and a.get("data-total"):  # written as <polyline …/>: see handle_startendtag
            self.totals.append(int(str(a["data-total"])))
        if (tag == "ol" and a.get("class") == "timeline") or (self._in_timeline and tag == "ol"):
            self._in_timeline += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "polyline" and a.get("data-total"):
            self.totals.append(int(str(a["data-total"])))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "ol" and self._in_timeline:
            self._in_timeline -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._figure is not None and data.strip() and self.stack[-1] == "b":
            self.figures[self._figure] = data.strip()
            self._figure = None
        if self._in_timeline:
            self.timeline.append(data)

    def words(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.text))


def report(run_cli: CliRun, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Parsed, dict[str, Any]]:
    """The HTML report written by the CLI, parsed, beside `status --json` at the same moment."""
    out = tmp_path / "report.html"
    result = run_cli("report", SLUG, "--format", "html", "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    status = run_cli("status", SLUG, "--json", env=env)
    assert status.exit_code == 0, status.output
    return Parsed(out.read_text(encoding="utf-8")), json.loads(status.stdout)


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %"


def assert_headline(page: Parsed, coverage: dict[str, Any]) -> None:
    """The tiles carry status's figures: affected, told before the cutoff and in time (each with its share)."""
    affected, told, in_time = (coverage[k] for k in ("affected_accounts", "told_before_cutoff", "told_in_time"))
    assert page.figures["affected_accounts"] == f"{affected:,}"
    assert page.figures["told_before_cutoff"] == f"{told:,} · {share(told, affected)}"
    assert page.figures["told_in_time"] == f"{in_time:,} · {share(in_time, affected)}"
    assert page.figures["not_told"] == f"{affected - told:,} · {share(affected - told, affected)}"
    assert f"{share(told, affected)} of the {affected:,} affected accounts" in page.words()


def assert_sentences(page: Parsed) -> None:
    timeline = "".join(page.timeline).replace(HOSTILE, "")  # the story's flip was run by a hostile-named actor
    assert timeline.strip()
    assert not KEY_VALUE.search(timeline), KEY_VALUE.search(timeline)
    assert not WHOLE_DIGEST.search(timeline)


def test_the_headline_is_status_coverage_and_the_flip_is_plotted(run_cli: CliRun, story: Engine,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    """Every kind of story: Ana, Eve and Fay told in time, Dee told two days before the cutoff (told, not in time),
    Ben's notice bounced, Cai suppressed; the flip switched 3 devices."""
    page, status = report(run_cli, tmp_path)
    coverage = status["notice_coverage"]
    assert coverage == {"affected_accounts": 6, "told_before_cutoff": 4, "told_in_time": 3,
                        "not_told": {"bounced": 1, "failed": 0, "suppressed": 1, "never_sent": 0}}
    assert_headline(page, coverage)
    words = page.words()
    assert "66.7 % of the 6 affected accounts were told before the cutoff; 50.0 % in time (7 days' notice)." in words
    assert "2 were not told: 1 bounced, 1 suppressed." in words
    assert "1 was told less than 7 days before the cutoff" in words
    # The flip over time: one line, as many devices as the flip switched, said in words at its end.
    assert page.totals == [status["flip"]["changed"]] == [3]
    assert "3 devices switched" in words and "The flip over time" in words
    # No bare figures: the flip's tiles say what each means; the old "rolled back / left" tile is gone.
    assert "not switched: no delivered notice" in words and " / 0" not in words
    assert "Flip: 3 devices switched" in words
    assert_sentences(page)

    # The rollback: the switched line keeps every device it switched; a second line counts those put back.
    assert run_cli("rollback", SLUG).exit_code == 0
    page, status = report(run_cli, tmp_path)
    flip = status["flip"]
    assert page.totals == [flip["changed"] + flip["rolled_back"] + flip["left"], flip["rolled_back"]] == [3, 3]
    assert "3 devices rolled back" in page.words() and "Rollback: 3 devices put back" in page.words()
    assert_sentences(page)


def definition(tmp: Path) -> Path:
    """The shipped campaign without its approval and send window (the scheduler sends at once), fast retries."""
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = re.sub(r"(?ms)^\[approval\][^\n]*\n.*?(?=^\[)", "", text_)
    start, end = text_.index("[send_window]"), text_.index("[bounces]")
    text_ = text_[:start] + "[limits]\nrate_per_second = 500\nconcurrency = 4\nretry_base_seconds = 0.01\n\n" + \
        text_[end:]
    path = tmp / "def.toml"
    path.write_text(text_, encoding="utf-8")
    return path


@pytest.mark.slow
def test_through_the_scheduler_a_late_bounce_untells_and_the_campaign_ends_done(
        run_cli: CliRun, smtpd: SmtpServer, write_file: Callable[..., Path], tmp_path: Path) -> None:
    """Five accounts, one suppressed: the scheduler sends the notice; a bounce that comes back the next day
    lowers told (4 → 3); the reminder, the flip and the confirmation; the report then reads done."""
    env = {"CAMPAIGN_BOUNCE_KEY": KEY, "CAMPAIGN_SMTP_URL": smtpd.url}

    def at(when: str) -> dict[str, str]:
        return {**env, "CAMPAIGN_CLOCK": when}

    early = at("2025-03-08T00:00:00Z")
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=early).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=early).exit_code == 0
    assert run_cli("suppress", "add", "user4@example.com", "--reason", "asked not to be mailed", env=early) \
        .exit_code == 0
    for args in (("create", str(definition(tmp_path))), ("schedule", SLUG)):
        result = run_cli(*args, env=early)
        assert result.exit_code == 0, result.output

    def scheduler(when: str) -> None:
        result = run_cli("scheduler", "run", "--once", env=at(when))
        assert result.exit_code == 0, result.output

    scheduler("2025-03-14T07:05:00Z")
    assert len(smtpd.messages) == N - 1
    page, status = report(run_cli, tmp_path, at("2025-03-14T08:00:00Z"))
    assert status["notice_coverage"]["told_before_cutoff"] == N - 1
    assert_headline(page, status["notice_coverage"])
    assert "80.0 % of the 5 affected accounts have been told so far; 80.0 % in time" in page.words()
    assert "1 not told yet: 1 suppressed." in page.words()
    assert page.totals == []  # nothing switched yet
    assert "No device has been switched yet." in page.words()

    # user0's relay returns the notice the next day: taken in, it is no longer told.
    sent = next(m for m in smtpd.messages if m.recipients[0] == "user0@example.com")
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(bm.google(bm.Sent(sent.sender, sent.recipients[0], sent.data)))
    box.close()
    result = run_cli("bounces", "import", str(tmp_path / "Maildir"), env=at("2025-03-15T09:00:00Z"))
    assert result.exit_code == 0, result.output
    page, status = report(run_cli, tmp_path, at("2025-03-15T10:00:00Z"))
    coverage = status["notice_coverage"]
    assert (coverage["told_before_cutoff"], coverage["not_told"]["bounced"]) == (N - 2, 1)
    assert_headline(page, coverage)
    assert "2 not told yet: 1 bounced, 1 suppressed." in page.words()
    assert "Returned mail taken in" in page.words()

    # The reminder, the flip at the cutoff, the confirmation: every step has run, the campaign is done.
    for when in ("2025-03-25T07:05:00Z", "2025-03-28T07:05:00Z", "2025-03-28T09:05:00Z", "2025-03-28T09:10:00Z"):
        scheduler(when)
    page, status = report(run_cli, tmp_path, at("2025-03-29T00:00:00Z"))
    assert status["state"] == "done"
    assert re.search(r"State: done — every step has run\.", page.words())
    assert_headline(page, status["notice_coverage"])
    assert "60.0 % of the 5 affected accounts were told before the cutoff; 60.0 % in time (7 days' notice)." \
        in page.words()
    assert page.totals == [status["flip"]["changed"]] == [N - 2]  # user0 (bounced) and user4 held back
    assert "Done Every step has run: the campaign is finished." in re.sub(r"\s+", " ", " ".join(page.timeline))
    assert_sentences(page)


# -- the timeline's words, action by action ------------------------------------------------------------------

DIGEST = "sha256:" + "ab12" * 16
SETTING = sentences.Setting("voice_recordings", "do_not_send", "dont_save")
DETAILS: dict[str, dict[str, Any]] = {
    "campaign.create": {"source": "/srv/defs/voice.toml", "cutoff": "2025-03-28T07:00:00+00:00",
                        "waves": ["notice", "reminder"], "approval_required": True},
    "campaign.replace": {"source": "voice.toml", "cutoff": "2025-04-04T07:00:00+00:00", "waves": ["notice"],
                         "approval_required": False},
    "campaign.schedule": {"cutoff": "2025-03-28T07:00:00+00:00", "rendered": 1200,
                          "steps": ["wave:notice at 2025-03-14T07:00:00+00:00", "flip at 2025-03-28T07:00:00+00:00"],
                          "approved_by": ["bob"], "version": 2, "digest": DIGEST},
    "campaign.test_send": {"to": ["qa@example.com", "lead@example.com"], "messages": 6, "sent": 6},
    "campaign.preview_real_sample": {"out": "/srv/review/gallery", "messages": 24, "locales": ["de-AT", "ja-JP"]},
    "campaign.pause": {}, "campaign.resume": {}, "campaign.cancel": {"steps_cancelled": 2},
    "campaign.unschedule": {"steps_dropped": 3}, "campaign.done": {},
    "campaign.approve": {"version": 2, "digest": DIGEST, "defined_by": "alice", "required": True},
    "campaign.revoke_approval": {"version": 2, "digest": DIGEST},
    "wave.send": {"wave": "notice", "added": 1180, "ignore_window": False, "ahead_seconds": 90000,
                  "out_of_order": True},
    "wave.sent": {"wave": "notice", "counts": {"pending": 0, "sending": 0, "sent": 1180, "failed": 0, "bounced": 2,
                                               "suppressed": 3, "skipped": 0, "expired": 0}, "attempted": 1182},
    "wave.expire": {"wave": "reminder", "expired": 12},
    "wave.pause": {"wave": "notice", "reason": "20 % of the last 200 attempts failed"},
    "flip": {"before_cutoff": False, "include_unnotified": False, "changed": 1150, "held_back": 5, "waiting": 2,
             "next_due": "2025-03-30T07:00:00+00:00", "batches": 3,
             "apply": {"url": "https://settings.example/api", "sent": 1150, "applied": 1149, "left": 1,
                       "waiting": 0, "paused": None, "unavailable": None}},
    "rollback": {"rolled_back": 1100, "left": 50, "batches": 2},
    "bounces.import": {"source": "imaps://bounces@mail.example/INBOX", "bounced": 2, "failed": 1, "suppressed": 2},
    "preflight.failed": {"errors": [{"code": "missing-secret", "message": "CAMPAIGN_BOUNCE_KEY is not set"}]},
    "preflight.passed": {},
}
EXPECTED = {
    "campaign.approve": ("Approved by bob", "Definition version 2, sha256 ab12ab12ab12…, written by alice."),
    "wave.sent": ("Wave notice sent: 1,180 messages", "1,182 delivery attempts in this run; the wave's other "
                  "recipients: 2 bounced and 3 suppressed (never mailed)."),
    "flip": ("Flip: 1,150 devices switched", "1,150 devices switched to dont_save; 5 held back (no delivered "
             "notice); 2 waiting for fair notice, the first until 2025-03-30 07:00 UTC; in 3 batches; 1,149 applied "
             "by the settings service, 1 refused there (the device held another value)."),
    "campaign.schedule": ("Scheduled", "1,200 messages rendered without an error; planned: the notice wave at "
                          "2025-03-14 07:00 UTC and the flip at 2025-03-28 07:00 UTC; approved by bob (definition "
                          "version 2, sha256 ab12ab12ab12…)."),
}


def recorded_actions() -> set[str]:
    """Every audit action the package records for a campaign, read from its source: the action of each
    `db.transaction(…)`, `audit.record(…)` and `tx.action = …`, and the constants that name them (the global
    ones, imports and suppressions, are not in a campaign's timeline)."""
    literal = re.compile(r'"((?:campaign|wave|bounces|preflight)\.[a-z_]+|flip|rollback)"')
    where = re.compile(r"transaction\(|audit\.record\(|tx\.action = |^[A-Z_, ]+ = ")
    found = set()
    for path in (ROOT / "campaign").rglob("*.py"):
        if "evidence" in path.parts or path.name == "webhook_events.py":  # webhook event types, not audit actions
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if where.search(line.strip()):
                found.update(literal.findall(line))
    found -= {"campaign.json", "campaign.toml"}  # a click context key and the configuration file: no actions
    # campaigns.set_state records f"campaign.{action}" for these
    return found | {"campaign.pause", "campaign.resume", "campaign.cancel"}


def test_every_recorded_action_has_words_of_its_own() -> None:
    actions = recorded_actions()
    assert {"campaign.create", "campaign.done", "wave.sent", "flip", "rollback", "preflight.failed"} <= actions
    assert actions <= set(sentences.WORDS) | {"campaign.approve"}, actions - set(sentences.WORDS)
    assert set(DETAILS) >= actions


@pytest.mark.parametrize("action", sorted(DETAILS))
def test_each_action_reads_as_a_sentence(action: str) -> None:
    said = sentences.say(action, "bob", DETAILS[action], SETTING)
    text_ = f"{said.what} {said.detail}"
    assert said.what and not said.what.startswith("Recorded")
    assert not KEY_VALUE.search(text_) and not WHOLE_DIGEST.search(text_) and "_" not in said.what
    assert not said.detail or said.detail.endswith(".")
    assert "imaps://" not in text_ and "/srv/defs" not in text_  # a mailbox URL or a folder says nothing here
    if action in EXPECTED:
        assert (said.what, said.detail) == EXPECTED[action]


def test_an_unknown_action_still_reads_as_words() -> None:
    said = sentences.say("gallery.real_sample", "carol", {"real_sample": True, "wave": "notice", "accounts": 3,
                                                          "digest": "f" * 64, "counts": {"a": 1, "b": 0}}, SETTING)
    assert said.what == "Recorded: gallery.real sample"
    assert said.detail == "Real sample: yes; wave: notice; accounts: 3; digest: ffffffffffff…; counts: 1 a."
