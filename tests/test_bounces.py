"""Bounces and complaints that arrive later, on SQLite and PostgreSQL: each notice goes out with a signed
per-delivery return path through a real SMTP server; the returned mail that relays write (Postfix, Exim,
Exchange, Google, qmail, an ARF complaint, a delay, a relay giving up, a forgery, mail that is not ours, an
auto-reply) is taken in from a Maildir, an mbox and a real IMAP server (Dovecot); a late bounce takes the notice
back for `require_notice` and fair notice, and the reminder skips the address; a second import changes nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json
import mailbox
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from campaign import verp
from campaign.cutoff import flip
from campaign.definition import parse_definition
from campaign.errors import CampaignError, InputError
from campaign.notices.mime import message_id
from campaign.returns import bounces
from campaign.returns.imap import ImapTimes
from campaign.store.bounces import IMPORT_LOCK
from tests import bounce_mail as bm
from tests.bounce_mail import Sent
from tests.conftest import ROOT, CliRun, table_counts
from tests.imapd import (  # noqa: F401  (fake_imap, imapd: the fixtures)
    PASSWORD,
    FakeImap,
    ImapServer,
    Script,
    answering,
    dripping,
    fake_imap,
    imapd,
    silent,
)
from tests.smtpd import SmtpServer
from tests.waiting import LogFile, wait_until

SLUG = "voice-local-processing"
KEY = "0123456789abcdef0123456789abcdef-test-key"
N = 12
ACCOUNTS = "account_id,email,name,locale,timezone,country\n" + "".join(
    f"a{i:03d},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(N))
DEVICES = "device_id,account_id,name,model,voice_recordings\n" + "".join(
    f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(N))
BOUNCES = '[bounces]\nreturn_path = "bounces@example.com"\n'
VERP_RE = re.compile(r"^bounces\+([a-z2-7]{32})@example\.com$")


def definition(tmp: Path, bounces: str = BOUNCES, migration: str = "require_notice = true",
               cutoff_in: dt.timedelta = dt.timedelta(days=10)) -> Path:
    cutoff = (dt.datetime.now(dt.UTC) + cutoff_in).replace(microsecond=0).isoformat()
    text_ = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text_ = "\n".join(line for line in text_.splitlines() if not line.startswith("min_notice")) + "\n"
    text_ = text_.replace("require_notice = true", migration)
    text_ = text_.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    start, end = text_.index("[send_window]"), text_.index("[context]")
    text_ = (text_[:start] + "[limits]\nrate_per_second = 2000\nconcurrency = 4\n\n" + bounces + "\n"
             + text_[end:])
    path = tmp / "def.toml"
    path.write_text(text_, encoding="utf-8")
    return path


Env = dict[str, str]


@pytest.fixture
def env(smtpd: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY", KEY)  # for the verbs called in-process, as for the CLI
    return {"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_BOUNCE_KEY": KEY, "CAMPAIGN_IMAP_PASSWORD": PASSWORD}


@pytest.fixture
def campaign(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path, env: Env) -> Callable[..., None]:
    """Import the accounts and devices; `campaign(...)` creates (or replaces) the campaign."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0

    def create(**kw: Any) -> None:
        result = run_cli("create", str(definition(tmp_path, **kw)), "--replace")
        assert result.exit_code == 0, result.output
    return create


def send(run_cli: CliRun, env: Env, smtpd: SmtpServer, wave: str = "notice") -> dict[str, bm.Sent]:
    """Send a wave now; returns what each recipient was sent (envelope sender, bytes)."""
    before = len(smtpd.messages)
    result = run_cli("send", SLUG, "--wave", wave, "--ignore-window", "--workers", "1", env=env)
    assert result.exit_code == 0, result.output
    return {m.recipients[0]: bm.Sent(m.sender, m.recipients[0], m.data) for m in smtpd.messages[before:]}


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


def states(engine: Engine, wave: str = "notice") -> dict[str, str]:
    return dict(rows(engine, "SELECT d.email, d.state FROM delivery d JOIN wave w ON w.id = d.wave_id "
                             "WHERE w.name = :w", w=wave))


def suppressed(engine: Engine) -> dict[str, str]:
    return dict(rows(engine, "SELECT email, source FROM suppression"))


def maildir(root: Path, messages: list[bytes]) -> Path:
    box = mailbox.Maildir(root, create=True)
    for raw in messages:
        box.add(raw)
    box.close()
    return root


def import_json(run_cli: CliRun, env: Env, path: Path, *args: str) -> dict[str, Any]:
    result = run_cli("bounces", "import", str(path), "--json", *args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def returned_mail(sent: dict[str, bm.Sent]) -> dict[str, bytes]:
    """One returned message of each kind, about user0..user9 (user10 and user11 hear nothing back)."""
    s = [sent[f"user{i}@example.com"] for i in range(10)]
    forged_token = base64.b32encode(bytes(20)).decode().lower()  # well-formed, signed by no one
    return {
        "postfix": bm.postfix(s[0]),                        # DSN with the whole message
        "postfix_headers": bm.postfix(s[1], headers_only=True),  # DSN with the original headers only
        "exim": bm.exim(s[2]),                              # Exim's own text format (flufl.bounce)
        "exchange": bm.exchange(s[3]),                      # Exchange Online, 5.1.10, headers only
        "google": bm.google(s[4]),                          # Gmail
        "complaint": bm.arf(s[5]),                          # ARF, sent by a feedback loop to another address
        "delay": bm.postfix(s[6], status="4.4.1", action="delayed"),
        "gave_up": bm.postfix(s[7], status="4.4.1"),        # Action: failed, 4.4.1: not delivered, not suppressed
        "forged": bm.forge(bm.postfix(s[8]), forged_token),  # user8's real Message-ID, a token no key signed
        "qmail": bm.qmail(s[9]),                            # qmail's text format (flufl.bounce)
        "foreign": bm.foreign(),                            # about mail that is not ours
        "auto_reply": bm.auto_reply("bounces@example.com"),
    }


# -- the signed return path ------------------------------------------------------------------------------

def test_each_message_goes_out_with_its_own_signed_return_path(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                               env: Env, campaign: Callable[..., None]) -> None:
    campaign()
    sent = send(run_cli, env, smtpd)
    assert len(sent) == N
    stored = dict(rows(engine, "SELECT email, message_id FROM delivery WHERE state = 'sent'"))
    tokens = set()
    for address, s in sent.items():
        m = VERP_RE.match(s.sender)
        assert m, s.sender
        # the token carries this delivery's reference, signed with the key
        assert verp.verify(m.group(1), (KEY.encode(),)) == stored[address][1:21]
        assert verp.verify(m.group(1), (b"another key of at least thirty-two chars",)) is None
        assert f"Message-ID: {stored[address]}" in s.message  # the header is the stored one, as before
        tokens.add(m.group(1))
    assert len(tokens) == N  # (without [bounces] the sender's own address: see the Message-ID test below)


def test_without_a_key_the_wave_pauses_and_nothing_goes_out(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                            env: Env, campaign: Callable[..., None],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    campaign()
    monkeypatch.delenv("CAMPAIGN_BOUNCE_KEY")
    result = run_cli("send", SLUG, "--wave", "notice", "--ignore-window", "--workers", "1",
                     env={"CAMPAIGN_SMTP_URL": env["CAMPAIGN_SMTP_URL"]})
    assert "CAMPAIGN_BOUNCE_KEY is not set" in result.output
    assert KEY not in result.output
    assert smtpd.messages == []
    assert set(states(engine).values()) == {"pending"}
    assert rows(engine, "SELECT state FROM wave WHERE name = 'notice'") == [("paused",)]


def test_tokens() -> None:
    key, old = KEY.encode(), b"the previous key, still verifying"
    ref = "0123456789abcdef0123"
    token = verp.make(ref, key)
    assert len(token) == 32 and token == token.lower()
    assert verp.verify(token, (key,)) == ref
    assert verp.verify(token.upper(), (key,)) == ref  # a relay that folds case does no harm
    assert verp.verify(verp.make(ref, old), (key, old)) == ref  # keys can change: the old one still verifies
    assert verp.verify(verp.make(ref, old), (key,)) is None
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert verp.verify(flipped, (key,)) is None
    assert verp.verify("not-a-token", (key,)) is None
    assert verp.tokens("To: <bounces+" + token.upper() + "@example.com>") == [token]


@pytest.mark.parametrize(("value", "message"), [
    ('"bounces+x@example.com"', "must not contain '+'"),
    ('"not an address"', "plain ASCII address"),
    ('"' + "b" * 32 + '@example.com"', "at most 31 characters"),
    ('"bö@example.com"', "plain ASCII address"),
])
def test_return_path_errors_name_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    path = definition(tmp_path, bounces=f"[bounces]\nreturn_path = {value}\n")
    text_ = path.read_text(encoding="utf-8")
    line = text_.splitlines().index(f"return_path = {value}") + 1
    with pytest.raises(InputError) as err:
        parse_definition(text_, str(path))
    assert f"{path}:{line}: bounces.return_path: " in str(err.value) and message in str(err.value)
    with pytest.raises(InputError, match=r"bounces.returnpath: unknown key — did you mean `return_path`\? "
                                         r"\(known here: return_path\)"):
        parse_definition(text_.replace(f"return_path = {value}", '"returnpath" = "x@example.com"'), str(path))
    assert parse_definition(definition(tmp_path).read_text(encoding="utf-8")).return_path == "bounces@example.com"


# -- taking returned mail in ----------------------------------------------------------------------------------

EXPECTED_KINDS = {"bounce": 8, "expired": 1, "delay": 1, "complaint": 1, "other": 0, "unrecognized": 1}
# postfix, postfix_headers, exim, exchange, google, qmail, and the forged and the foreign ones (ignored): 8


def check_taken_in(engine: Engine, result: dict[str, Any], run_cli: CliRun) -> None:
    assert result["messages"] == 12 and result["new"] == 12 and result["already"] == 0
    assert result["kinds"] == EXPECTED_KINDS
    assert result["outcomes"] == {"applied": 8, "recorded": 1, "unsigned": 0, "unmatched": 1, "forged": 1,
                                  "ignored": 1, "not_a_file": 0, "too_large": 0}
    assert (result["bounced"], result["failed"], result["suppressed"]) == (6, 1, 7)
    assert result["campaigns"] == {SLUG: {"bounced": 6, "failed": 1, "suppressed": 7}}
    listed = {r["outcome"]: r for r in result["listed"]}
    assert set(listed) == {"unmatched", "forged", "ignored"}
    assert "is not one of ours" in listed["unmatched"]["why"]
    assert "does not verify" in listed["forged"]["why"]
    got = states(engine)
    bounced = {f"user{i}@example.com" for i in (0, 1, 2, 3, 4, 9)}
    assert {a for a, s in got.items() if s == "bounced"} == bounced  # bounced after `sent`
    assert got["user7@example.com"] == "failed"  # the relay gave up: not delivered
    assert got["user5@example.com"] == got["user6@example.com"] == got["user8@example.com"] == "sent"
    assert suppressed(engine) == {**dict.fromkeys(bounced, "bounce"), "user5@example.com": "complaint"}
    (error,) = rows(engine, "SELECT last_error FROM delivery WHERE email = 'user3@example.com'")[0]
    assert error.startswith("returned after it was sent: 5.1.10") and "RecipientNotFound" in error
    by_kind = {(k, o, m) for k, o, m in rows(engine, "SELECT kind, outcome, matched_by FROM bounce")}
    assert ("delay", "recorded", "token") in by_kind and ("complaint", "applied", "token") in by_kind
    assert ("bounce", "forged", None) in by_kind and ("unrecognized", "ignored", None) in by_kind
    st = json.loads(run_cli("status", SLUG, "--json").stdout)["waves"]["notice"]
    assert (st["sent"], st["bounced"], st["failed"]) == (N - 7, 6, 1)
    # One person's story shows what came back about their message: user3's bounce, user6's delay, nothing for
    # user10 (whose notice went out and stayed out).
    story = json.loads(run_cli("report", SLUG, "--account", "a003", "--json").stdout)
    (notice,) = [m for m in story["messages"] if m["wave"] == "notice"]
    (back,) = notice["returned"]
    assert (back["kind"], back["outcome"], back["status"]) == ("bounce", "applied", "5.1.10") and back["taken_in_at"]
    delay = json.loads(run_cli("report", SLUG, "--account", "a006", "--json").stdout)["messages"][0]["returned"]
    assert [(r["kind"], r["outcome"], r["status"]) for r in delay] == [("delay", "recorded", "4.4.1")]
    assert json.loads(run_cli("report", SLUG, "--account", "a010", "--json").stdout)["messages"][0]["returned"] == []
    text_ = run_cli("report", SLUG, "--account", "a003").output
    assert "came back: bounce 5.1.10 (applied), taken in " in text_


def test_returned_mail_from_several_relays(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                           campaign: Callable[..., None], tmp_path: Path) -> None:
    campaign()
    mail = returned_mail(send(run_cli, env, smtpd))
    box = maildir(tmp_path / "Maildir", list(mail.values()))

    before = table_counts(engine)
    dry = import_json(run_cli, env, box, "--dry-run")
    assert table_counts(engine) == before  # G1: the dry run changed no row
    assert dry["dry_run"] is True and dry["new"] == 12 and dry["bounced"] == 6 and dry["suppressed"] == 7

    check_taken_in(engine, import_json(run_cli, env, box), run_cli)
    events = rows(engine, "SELECT campaign_id, detail FROM audit_event WHERE action = 'bounces.import' ORDER BY id")
    assert len(events) == 2  # the import's own, and one in the campaign's log
    (mine,) = [json.loads(d) for c, d in events if c is None]
    (campaigns,) = [json.loads(d) for c, d in events if c is not None]
    assert mine["new"] == 12 and mine["source"] == str(box) and campaigns["bounced"] == 6
    assert "bounces.import" in run_cli("log", SLUG).output

    # The same mail again — from the Maildir, then as an mbox — changes nothing, not even the audit log.
    after = table_counts(engine)
    again = import_json(run_cli, env, box)
    assert (again["new"], again["already"]) == (0, 12)
    mbox_path = tmp_path / "returned.mbox"
    mb = mailbox.mbox(mbox_path)
    for raw in mail.values():
        mb.add(raw)
    mb.close()
    assert import_json(run_cli, env, mbox_path)["already"] == 12
    assert table_counts(engine) == after

    # The human summary says the same, and lists what it did not act on, by where it lies.
    result = run_cli("bounces", "import", str(box), env=env)
    assert "took in 0, 12 taken in before" in result.output


@contextmanager
def imports_held(engine: Engine) -> Iterator[None]:
    """Hold what a `bounces import` waits for before it reads which mail is new: the advisory lock on
    PostgreSQL, the write lock on SQLite."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": IMPORT_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": IMPORT_LOCK})
                conn.commit()
        else:
            conn.execution_options(campaign_write=True)  # BEGIN IMMEDIATE
            with conn.begin():
                yield


def test_two_imports_of_the_same_mail_at_once_take_it_in_once(run_cli: CliRun, engine: Engine, db_url: str,
                                                               smtpd: SmtpServer, env: Env,
                                                               campaign: Callable[..., None],
                                                               tmp_path: Path) -> None:
    """Two `bounces import` processes started together on the same mail (a cron job and a person, say): one
    takes it in, the other finds it taken in — no duplicate key, no mail counted twice.

    Both are let go only once each has read the mail and asked for its turn (said on stderr by tests/announce.py
    just before the statement that waits for it: SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock, where
    pg_locks shows both waiting too), so that they do meet there."""
    campaign()
    box = maildir(tmp_path / "Maildir", list(returned_mail(send(run_cli, env, smtpd)).values()))
    environ = {**os.environ, **env, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "tester",
               "CAMPAIGN_TEMPLATES": str(ROOT / "templates"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "CAMPAIGN_TEST_ANNOUNCE": r"^BEGIN IMMEDIATE|pg_advisory_xact_lock"}
    command = [sys.executable, "-m", "tests.announce", "bounces", "import", str(box), "--json"]
    logs = [LogFile(tmp_path / f"import{i}.stderr") for i in range(2)]
    with imports_held(engine):
        imports = []
        for log in logs:
            with log.path.open("w") as err:
                imports.append(subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=err, text=True))
        for log in logs:  # each has read the mail and asks for its turn, which the test holds
            log.wait_for("announce: ")
        if engine.dialect.name == "postgresql":
            wait_until(lambda: rows(engine, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT "
                                            "granted AND database = (SELECT oid FROM pg_database WHERE datname = "
                                            "current_database())") == [(2,)], 60, what="both waiting for the lock")
        assert [p.poll() for p in imports] == [None, None], [log.text() for log in logs]
    outcomes = [(p.communicate(timeout=120)[0], log.text()) for p, log in zip(imports, logs, strict=True)]
    assert [p.returncode for p in imports] == [0, 0], [err for _, err in outcomes]
    counts = sorted((json.loads(out)["new"], json.loads(out)["already"]) for out, _ in outcomes)
    assert counts == [(0, 12), (12, 0)]
    assert rows(engine, "SELECT count(*) FROM bounce") == [(12,)]
    assert states(engine)["user0@example.com"] == "bounced"


def test_mbox_is_read_with_its_lines(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                     campaign: Callable[..., None], tmp_path: Path) -> None:
    campaign()
    mail = returned_mail(send(run_cli, env, smtpd))
    path = tmp_path / "returned.mbox"
    mb = mailbox.mbox(path)
    for raw in mail.values():
        mb.add(raw)
    mb.close()
    result = import_json(run_cli, env, path)
    check_taken_in(engine, result, run_cli)
    lines = path.read_bytes().split(b"\n")
    for item in result["listed"]:  # each listed message is named PATH:LINE of its `From ` line
        file, _, line = item["origin"].rpartition(":")
        assert file == str(path) and lines[int(line) - 1].startswith(b"From ")


def test_message_id_matches_when_the_campaign_has_no_return_path(run_cli: CliRun, engine: Engine,
                                                                 smtpd: SmtpServer, env: Env,
                                                                 campaign: Callable[..., None],
                                                                 tmp_path: Path) -> None:
    campaign(bounces="")
    sent = send(run_cli, env, smtpd)
    s0, s1, s2 = (sent[f"user{i}@example.com"] for i in range(3))
    assert {s.sender for s in sent.values()} == {"privacy@example.com"}  # no [bounces]: the sender, as before
    box = maildir(tmp_path / "Maildir", [bm.postfix(s0, headers_only=True), bm.exim(s1), bm.arf(s2)])
    result = import_json(run_cli, env, box)
    assert result["outcomes"]["applied"] == 3 and (result["bounced"], result["suppressed"]) == (2, 3)
    assert {r[0] for r in rows(engine, "SELECT matched_by FROM bounce")} == {"message_id"}
    assert states(engine)["user0@example.com"] == states(engine)["user1@example.com"] == "bounced"
    assert suppressed(engine) == {"user0@example.com": "bounce", "user1@example.com": "bounce",
                                  "user2@example.com": "complaint"}


def without_token(s: Sent, message_id: str | None = None) -> bm.Sent:
    """The message as a relay that returns it without the return path would quote it (the campaign's own sender
    instead), its Message-ID replaced by `message_id` if given."""
    data = s.data
    if message_id is not None:
        data = re.sub(rb"(?m)^Message-ID: <[^>]*>", f"Message-ID: {message_id}".encode(), data)
    return bm.Sent("privacy@example.com", s.recipient, data)


def stored_message_id(engine: Engine, email: str, wave: str = "notice") -> str:
    (mid,) = rows(engine, "SELECT d.message_id FROM delivery d JOIN wave w ON w.id = d.wave_id "
                          "WHERE d.email = :e AND w.name = :w", e=email, w=wave)[0]
    return str(mid)


def test_a_guessable_message_id_bounces_nothing(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                                campaign: Callable[..., None], tmp_path: Path) -> None:
    """A campaign that signs its return path keys its Message-IDs with the bounce key: the Message-ID that anyone
    can work out (sha256 of slug, wave, account) is not one of its deliveries', so a bounce quoting it to the
    bounce address changes nothing; the genuine one, which only the key makes, proves as much as a token."""
    campaign()
    sent = send(run_cli, env, smtpd)
    domain = "example.com"
    guessable = message_id(SLUG, "notice", "a000", domain)  # the attacker's formula
    keyed = stored_message_id(engine, "user0@example.com")
    assert keyed == message_id(SLUG, "notice", "a000", domain, KEY.encode()) != guessable
    assert f"Message-ID: {keyed}" in sent["user0@example.com"].message  # the header is the stored one
    forged = bm.postfix(without_token(sent["user0@example.com"], guessable), headers_only=True)
    genuine = bm.postfix(without_token(sent["user1@example.com"]), headers_only=True)
    assert not verp.tokens(forged.decode()) and not verp.tokens(genuine.decode())
    result = import_json(run_cli, env, maildir(tmp_path / "Maildir", [forged, genuine]))
    assert result["outcomes"]["unmatched"] == 1 and result["outcomes"]["applied"] == 1
    assert (result["bounced"], result["suppressed"]) == (1, 1)
    assert states(engine)["user0@example.com"] == "sent"  # still counts for the flip
    assert states(engine)["user1@example.com"] == "bounced"
    assert suppressed(engine) == {"user1@example.com": "bounce"}
    assert {r for r in rows(engine, "SELECT email, outcome, matched_by FROM bounce")} == {
        ("user1@example.com", "applied", "message_id"), ("user0@example.com", "unmatched", None)}


def test_an_old_guessable_message_id_alone_does_not_suppress(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                             env: Env, campaign: Callable[..., None],
                                                             tmp_path: Path) -> None:
    """A delivery sent before Message-IDs were keyed keeps its guessable one: a bounce quoting it, without a
    token, takes the notice back (the safe side) but suppresses no one."""
    campaign()
    s0 = send(run_cli, env, smtpd)["user0@example.com"]
    guessable = message_id(SLUG, "notice", "a000", "example.com")
    with engine.begin() as conn:
        conn.execute(text("UPDATE delivery SET message_id = :m WHERE email = 'user0@example.com'"), {"m": guessable})
    unsigned = bm.postfix(without_token(s0, guessable), headers_only=True)
    result = import_json(run_cli, env, maildir(tmp_path / "Maildir", [unsigned]))
    assert result["outcomes"]["unsigned"] == 1 and result["suppressed"] == 0 and result["bounced"] == 1
    assert "not suppressed" in result["listed"][0]["why"]
    assert states(engine)["user0@example.com"] == "bounced" and suppressed(engine) == {}


def test_a_late_bounce_takes_the_notice_back(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                             campaign: Callable[..., None], tmp_path: Path) -> None:
    """require_notice: the device whose only notice bounced later is held back; the reminder skips the address."""
    campaign()
    sent = send(run_cli, env, smtpd)
    import_json(run_cli, env, maildir(tmp_path / "Maildir", [bm.google(sent["user0@example.com"])]))
    reminded = send(run_cli, env, smtpd, wave="reminder")
    assert "user0@example.com" not in reminded and len(reminded) == N - 1
    assert states(engine, "reminder")["user0@example.com"] == "suppressed"
    result = flip.flip(engine, SLUG, "ops", flip.FlipOptions(before_cutoff=True))
    assert (result.changed, result.held_back) == (N - 1, 1)
    assert result.held_back_devices[0]["device_id"] == "d000"
    assert rows(engine, "SELECT value FROM device_setting WHERE device_id = 'd000'") == [("do_not_send",)]


def test_fair_notice_does_not_count_a_notice_that_bounced(run_cli: CliRun, engine: Engine, smtpd: SmtpServer,
                                                          env: Env, campaign: Callable[..., None],
                                                          tmp_path: Path) -> None:
    """min_notice: every device waits at the cutoff; user0's notice bounces meanwhile; when fair notice has run,
    the others are switched and d000 is held back, not flipped on the strength of a notice never delivered."""
    campaign(migration='require_notice = true\nmin_notice = "14d"')
    sent = send(run_cli, env, smtpd)
    cutoff = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    at_cutoff = flip.flip(engine, SLUG, "scheduler", now=cutoff + dt.timedelta(minutes=1))
    assert (at_cutoff.changed, at_cutoff.waiting) == (0, N)
    import_json(run_cli, env, maildir(tmp_path / "Maildir", [bm.exim(sent["user0@example.com"])]))
    later = flip.flip_due(engine, SLUG, "scheduler", now=cutoff + dt.timedelta(days=5))
    assert (later.changed, later.waiting, later.held_back) == (N - 1, 0, 1)
    (state, notice_at) = rows(engine, "SELECT state, notice_at FROM setting_change WHERE device_id = 'd000'")[0]
    assert state == "held_back" and notice_at is None


def test_bad_paths_are_refused_clearly(run_cli: CliRun, engine: Engine, env: Env, write_file: Callable[..., Path],
                                       tmp_path: Path) -> None:
    before = table_counts(engine)
    not_mbox = write_file("notes.txt", "hello\nworld\n")
    result = run_cli("bounces", "import", str(not_mbox), env=env)
    assert result.exit_code == 2 and f"{not_mbox}:1: not an mbox" in result.output
    folder = tmp_path / "plain"
    folder.mkdir()
    result = run_cli("bounces", "import", str(folder), env=env)
    assert result.exit_code == 2 and "not a Maildir" in result.output
    result = run_cli("bounces", "import", str(tmp_path / "missing"), env=env)
    assert result.exit_code == 2 and "no such file or folder" in result.output
    assert "Traceback" not in result.output
    assert table_counts(engine) == before


def test_mail_too_broken_to_read_is_listed_not_fatal(run_cli: CliRun, engine: Engine, env: Env,
                                                     tmp_path: Path) -> None:
    box = maildir(tmp_path / "Maildir", [b"", b"\xff\xfe garbage without headers\r\n",
                                         b"Subject: no sender\r\n\r\nDelivery failed, sorry.\r\n"])
    result = run_cli("bounces", "import", str(box), "--json", env=env)
    assert result.exit_code == 0 and "Traceback" not in result.output
    got = json.loads(result.stdout)
    assert (got["new"], got["outcomes"]["ignored"]) == (3, 3)
    assert any("could not be read" in r[0] for r in rows(engine, "SELECT detail FROM bounce"))


def test_a_token_needs_the_key_to_be_read(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                          campaign: Callable[..., None], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    campaign()
    box = maildir(tmp_path / "Maildir", [bm.postfix(send(run_cli, env, smtpd)["user0@example.com"])])
    monkeypatch.delenv("CAMPAIGN_BOUNCE_KEY")
    before = table_counts(engine)
    result = run_cli("bounces", "import", str(box), env={"CAMPAIGN_BOUNCE_KEY": ""})
    assert result.exit_code == 2 and "CAMPAIGN_BOUNCE_KEY is empty" in result.output
    assert table_counts(engine) == before


# -- keys: a wrong one loses nothing, a retired one still verifies ------------------------------------------

WRONG = "a-wrong-bounce-key-typed-by-someone-0123"
NEW_KEY = "the-new-bounce-key-after-rotation-456789"


def bounce_rows(engine: Engine) -> set[tuple[Any, ...]]:
    return set(rows(engine, "SELECT email, kind, outcome, matched_by FROM bounce"))


def test_a_wrong_key_loses_no_bounce(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                     campaign: Callable[..., None], tmp_path: Path) -> None:
    """Genuine returned mail taken in while CAMPAIGN_BOUNCE_KEY is wrong (a typo, a rotation gone wrong) is
    judged forged, and judged again at the next import: with the right key it takes effect then — the notice
    no longer counts, the address is suppressed — instead of being "taken in before" for good."""
    campaign()
    sent = send(run_cli, env, smtpd)
    box = maildir(tmp_path / "Maildir", [bm.postfix(sent["user0@example.com"]),  # by its token
                                         bm.postfix(without_token(sent["user1@example.com"]), headers_only=True)])
    wrong = {**env, "CAMPAIGN_BOUNCE_KEY": WRONG}  # ... by its keyed Message-ID
    first = import_json(run_cli, wrong, box)
    assert (first["new"], first["outcomes"]["forged"], first["bounced"]) == (2, 2, 0)
    assert all("judged again" in r["why"] for r in first["listed"])
    assert set(states(engine).values()) == {"sent"} and suppressed(engine) == {}
    assert bounce_rows(engine) == {("user0@example.com", "bounce", "forged", None),
                                   ("user1@example.com", "bounce", "forged", None)}

    # Still the wrong key: judged forged again, nothing changes, not even the audit log.
    before = table_counts(engine)
    again = import_json(run_cli, wrong, box)
    assert (again["new"], again["already"], again["judged_again"]) == (0, 2, 0)
    assert table_counts(engine) == before

    # The right key: both take effect now.
    right = import_json(run_cli, env, box)
    assert (right["new"], right["already"], right["judged_again"]) == (2, 0, 2)
    assert (right["outcomes"]["applied"], right["bounced"], right["suppressed"]) == (2, 2, 2)
    assert states(engine)["user0@example.com"] == states(engine)["user1@example.com"] == "bounced"
    assert suppressed(engine) == {"user0@example.com": "bounce", "user1@example.com": "bounce"}
    assert bounce_rows(engine) == {("user0@example.com", "bounce", "applied", "token"),
                                   ("user1@example.com", "bounce", "applied", "message_id")}
    (error,) = rows(engine, "SELECT last_error FROM delivery WHERE email = 'user0@example.com'")[0]
    assert error.startswith("returned after it was sent: 5.1.1")

    # Taken in for good now: a further import changes nothing.
    after = table_counts(engine)
    assert import_json(run_cli, env, box)["already"] == 2
    assert table_counts(engine) == after


def test_a_retired_key_verifies_and_never_signs(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                                campaign: Callable[..., None], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing keys: CAMPAIGN_BOUNCE_KEY=NEW signs, CAMPAIGN_BOUNCE_KEY_PREVIOUS=OLD still verifies what went
    out under OLD (tokens and Message-IDs), and never signs; CAMPAIGN_BOUNCE_KEY=NEW,OLD works as before."""
    campaign()
    sent = send(run_cli, env, smtpd)
    rotated = {**env, "CAMPAIGN_BOUNCE_KEY": NEW_KEY, "CAMPAIGN_BOUNCE_KEY_PREVIOUS": KEY}
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY", NEW_KEY)
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY_PREVIOUS", KEY)
    result = import_json(run_cli, rotated, maildir(tmp_path / "one", [
        bm.postfix(sent["user0@example.com"]),
        bm.postfix(without_token(sent["user1@example.com"]), headers_only=True)]))
    assert (result["outcomes"]["applied"], result["bounced"], result["suppressed"]) == (2, 2, 2)
    listed = import_json(run_cli, {**env, "CAMPAIGN_BOUNCE_KEY": f"{NEW_KEY},{KEY}"},
                         maildir(tmp_path / "two", [bm.exim(sent["user2@example.com"])]))
    assert listed["outcomes"]["applied"] == 1 and states(engine)["user2@example.com"] == "bounced"

    # The reminder goes out signed with the new key only, and its Message-IDs are keyed with it.
    reminded = send(run_cli, rotated, smtpd, wave="reminder")
    m = VERP_RE.match(reminded["user3@example.com"].sender)
    assert m is not None
    assert verp.verify(m.group(1), (NEW_KEY.encode(),)) is not None
    assert verp.verify(m.group(1), (KEY.encode(),)) is None
    assert stored_message_id(engine, "user3@example.com", "reminder") == \
        message_id(SLUG, "reminder", "a003", "example.com", NEW_KEY.encode())

    short = run_cli("bounces", "import", str(maildir(tmp_path / "three", [bm.qmail(sent["user4@example.com"])])),
                    env={**rotated, "CAMPAIGN_BOUNCE_KEY_PREVIOUS": "short"})
    assert short.exit_code == 2 and "CAMPAIGN_BOUNCE_KEY_PREVIOUS: each key must have at least 32" in short.output


# -- secrets in returned mail --------------------------------------------------------------------------------

def test_secrets_in_returned_mail_are_masked(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                             campaign: Callable[..., None], tmp_path: Path) -> None:
    """A returned message's diagnostic that carries the IMAP password or the bounce key (a relay echoing what it
    got, or someone probing) is stored and shown with both masked: the bounce row, the delivery's last error,
    the suppression's reason, the import's listing and a person's report."""
    campaign()
    sent = send(run_cli, env, smtpd)
    leaky = bm.postfix(sent["user0@example.com"]).replace(b"User unknown", f"User {PASSWORD} unknown {KEY}".encode())
    stranger = bm.postfix(Sent("someone@elsewhere.example", f"{PASSWORD}@example.org",
                               b"From: someone@elsewhere.example\nSubject: x\nMessage-ID: <x1@elsewhere.example>\n\n"
                               b"hello\n"), headers_only=True, to="bounces@example.com")
    box = maildir(tmp_path / "Maildir", [leaky, stranger])
    shown = run_cli("bounces", "import", str(box), "--dry-run", env=env).output  # the listing, as text
    result = import_json(run_cli, env, box)
    assert result["listed"][0]["recipient"] == "***@example.org"
    shown += json.dumps(result) + run_cli("report", SLUG, "--account", "a000").output + \
        run_cli("report", SLUG, "--account", "a000", "--json").output
    assert "unmatched" in shown
    stored = " ".join(str(v) for table in table_counts(engine).values() for row in table for v in row)
    assert "User *** unknown ***" in rows(engine, "SELECT detail FROM bounce WHERE email = 'user0@example.com'")[0][0]
    assert "User *** unknown ***" in rows(engine, "SELECT last_error FROM delivery WHERE email = 'user0@example.com'"
                                          )[0][0]
    assert "User *** unknown ***" in rows(engine, "SELECT reason FROM suppression")[0][0]
    assert "User *** unknown ***" in shown
    for secret in (PASSWORD, KEY):
        assert secret not in stored and secret not in shown


# -- what cannot be read safely -------------------------------------------------------------------------------

MiB = 1024 * 1024


def import_process(db_url: str, env: Env, path: Path, memory_limit: int | None = None,
                   timeout: float = 120) -> tuple[int, str, str, int]:
    """`campaign bounces import PATH --json` in a process of its own (its memory measured alone, and a hang or
    a runaway cannot take the tests with it): (exit code, stdout, stderr, peak resident memory in bytes). With
    `memory_limit` its address space is capped (a read without end fails instead of taking the machine).

    The peak is the process's own VmHWM, read as it ends: its ru_maxrss would include the resident memory of
    this test process, which it was forked from (Linux keeps the larger of the two across exec)."""
    environ = {**os.environ, **env, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "tester",
               "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    cap = "" if memory_limit is None else \
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory_limit}, {memory_limit}))\n"
    peak_path = path.parent / f"{path.name}.peak"
    code = cap + textwrap.dedent("""\
        import re, runpy, sys
        path, peak = sys.argv[1:]
        sys.argv = ["campaign", "bounces", "import", path, "--json"]
        try:
            runpy.run_module("campaign", run_name="__main__")
        finally:
            with open("/proc/self/status") as status, open(peak, "w") as out:
                out.write(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
        """)
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(peak_path)], env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)
    peak = int(peak_path.read_text()) * 1024 if peak_path.exists() else 0
    return proc.returncode, proc.stdout, proc.stderr, peak


def test_what_is_not_a_regular_file_is_listed_not_read(db_url: str, engine: Engine, run_cli: CliRun, env: Env,
                                                       smtpd: SmtpServer, campaign: Callable[..., None],
                                                       tmp_path: Path) -> None:
    """In a Maildir's new/: a symlink to /dev/zero (read, it never ends), a FIFO (opened, it waits for a writer
    forever), a folder (read, it fails), a symlink to a genuine bounce elsewhere (a link is never followed):
    each is listed as not a file and not read; the genuine bounce beside them is taken in."""
    campaign()
    sent = send(run_cli, env, smtpd)
    box = maildir(tmp_path / "Maildir", [bm.postfix(sent["user0@example.com"])])
    outside = tmp_path / "elsewhere.eml"
    outside.write_bytes(bm.postfix(sent["user1@example.com"]))
    new = box / "new"
    (new / "1.zero").symlink_to("/dev/zero")
    os.mkfifo(new / "2.fifo")
    (new / "3.folder").mkdir()
    (new / "4.link").symlink_to(outside)
    code, out, err, _ = import_process(db_url, env, box, memory_limit=1024 * MiB, timeout=60)
    assert code == 0 and "Traceback" not in err, err
    result = json.loads(out)
    assert (result["messages"], result["new"], result["outcomes"]["not_a_file"]) == (5, 1, 4)
    why = {Path(r["origin"]).name: r["why"] for r in result["listed"] if r["outcome"] == "not_a_file"}
    assert why == {"1.zero": "a symbolic link: not followed", "2.fifo": "a FIFO", "3.folder": "a folder",
                   "4.link": "a symbolic link: not followed"}
    assert states(engine)["user0@example.com"] == "bounced" and states(engine)["user1@example.com"] == "sent"
    text_ = run_cli("bounces", "import", str(box), env=env).output
    assert "not acted on: 4 not_a_file" in text_ and f"{new / '2.fifo'}  not_a_file: a FIFO" in text_


def test_a_large_message_is_listed_and_memory_stays_bounded(db_url: str, engine: Engine, run_cli: CliRun,
                                                            env: Env, smtpd: SmtpServer,
                                                            campaign: Callable[..., None], tmp_path: Path) -> None:
    """A 50 MB returned message (a relay that returns the whole of a large message, or someone filling the
    bounce box) is listed as too large and never read whole: the import of a Maildir, or an mbox, holding it
    peaks under 200 MiB of memory (it took 520 MB). A message just under the cap is taken in, within the same
    bound, and so is the one after it."""
    campaign()
    sent = send(run_cli, env, smtpd)
    huge = bm.postfix(bm.padded(sent["user0@example.com"], 50 * MiB))
    large = bm.postfix(bm.padded(sent["user1@example.com"], 9 * MiB))
    assert len(huge) > 50 * MiB and 9 * MiB < len(large) < 10 * MiB
    box = maildir(tmp_path / "Maildir", [huge, large, bm.exim(sent["user2@example.com"])])
    code, out, err, peak = import_process(db_url, env, box)
    assert code == 0, err
    result = json.loads(out)
    assert (result["messages"], result["new"], result["outcomes"]["too_large"]) == (3, 2, 1)
    (listed,) = result["listed"]
    assert listed["outcome"] == "too_large" and listed["why"].startswith("larger than 10 MiB")
    assert 0 < peak < 200 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert [states(engine)[f"user{i}@example.com"] for i in range(3)] == ["sent", "bounced", "bounced"]

    mbox_path = tmp_path / "returned.mbox"
    mb = mailbox.mbox(mbox_path)
    for raw in (huge, bm.qmail(sent["user3@example.com"])):
        mb.add(raw)
    mb.close()
    del huge, large, mb
    code, out, err, peak = import_process(db_url, env, mbox_path)
    assert code == 0, err
    result = json.loads(out)
    assert (result["messages"], result["new"], result["outcomes"]["too_large"]) == (2, 1, 1)
    assert result["listed"][0]["origin"] == f"{mbox_path}:1" and result["listed"][0]["outcome"] == "too_large"
    assert 0 < peak < 200 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert states(engine)["user3@example.com"] == "bounced"


def test_a_chunk_is_bounded_by_bytes(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, env: Env,
                                     campaign: Callable[..., None], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk (one transaction) ends when its messages' bytes reach `Chunks.max_bytes`, not only after
    `max_messages` messages: here each message is a chunk of its own, one audit event each. The campaign's
    definition is read once for the whole import, not once a chunk."""
    campaign()
    sent = send(run_cli, env, smtpd)
    parsed: list[str] = []

    def parse(text_: str, source: str) -> Any:
        parsed.append(source)
        return parse_definition(text_, source)
    monkeypatch.setattr(bounces, "parse_definition", parse)  # a spy: it counts, and parses as before
    box = maildir(tmp_path / "Maildir", [bm.postfix(sent[f"user{i}@example.com"]) for i in range(3)])
    result = bounces.import_path(engine, box, "tester", chunks=bounces.Chunks(max_bytes=1))
    assert (result.new, result.bounced) == (3, 3)
    assert rows(engine, "SELECT count(*) FROM audit_event WHERE action = 'bounces.import' AND campaign_id IS NULL") \
        == [(3,)]
    assert len(parsed) == 1


# -- IMAP (Dovecot) ---------------------------------------------------------------------------------------

@pytest.fixture
def filled(run_cli: CliRun, smtpd: SmtpServer, env: Env, campaign: Callable[..., None],
           imapd: ImapServer) -> Iterator[ImapServer]:  # noqa: F811
    campaign()
    imapd.append(list(returned_mail(send(run_cli, env, smtpd)).values()))
    assert imapd.count("INBOX") == 12
    yield imapd


def test_fetch_from_imap(run_cli: CliRun, engine: Engine, env: Env, filled: ImapServer) -> None:
    before = table_counts(engine)
    result = run_cli("bounces", "fetch", filled.url(), "--dry-run", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 12
    assert table_counts(engine) == before and filled.count("INBOX") == 12 and filled.count("Processed") == 0

    result = run_cli("bounces", "fetch", filled.url(), "--json", env=env)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    check_taken_in(engine, got, run_cli)
    assert got["moved"] == 12 and filled.count("INBOX") == 0 and filled.count("Processed") == 12
    assert all(r["origin"].startswith(f"imap://bounces@127.0.0.1:{filled.imap_port}/INBOX;UID=")
               for r in got["listed"])
    assert PASSWORD not in result.output

    # The processed folder taken in again (say, by mistake) changes nothing; it stays where it is.
    after = table_counts(engine)
    result = run_cli("bounces", "fetch", filled.url("Processed"), "--move-to", "Processed", "--json", env=env)
    assert json.loads(result.stdout)["already"] == 12
    assert table_counts(engine) == after and filled.count("Processed") == 12


@pytest.mark.parametrize("imapd", ["IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS"], indirect=True)
def test_fetch_without_move_copies_and_expunges_its_own(run_cli: CliRun, engine: Engine, env: Env,
                                                        filled: ImapServer) -> None:
    """A server without MOVE (RFC 6851): COPY, mark deleted, UID EXPUNGE of those only — a message someone else
    marked deleted stays."""
    conn = filled.client()
    conn.select("INBOX")
    conn.append("INBOX", None, None, bm.auto_reply("bounces@example.com", "kept"))
    _typ, data = conn.search(None, "ALL")
    last = data[0].split()[-1]
    conn.store(last, "+FLAGS", r"(\Deleted)")  # another client's, not expunged yet
    conn.logout()
    result = run_cli("bounces", "fetch", filled.url(), "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["moved"] == 12
    assert filled.count("Processed") == 12 and filled.count("INBOX") == 1  # a plain EXPUNGE would have taken it


def test_fetch_over_tls_checks_the_certificate(run_cli: CliRun, engine: Engine, env: Env, filled: ImapServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    result = run_cli("bounces", "fetch", filled.url(tls=True), env=env)
    assert result.exit_code == 1 and "TLS failed" in result.output and "SSL_CERT_FILE" in result.output
    monkeypatch.setenv("SSL_CERT_FILE", str(filled.cert))  # our private authority: now it is trusted
    result = run_cli("bounces", "fetch", filled.url(tls=True), "--json", env={**env, "SSL_CERT_FILE": str(filled.cert)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 12 and filled.count("Processed") == 12


def test_fetch_refuses_what_is_unsafe(run_cli: CliRun, engine: Engine, env: Env, filled: ImapServer) -> None:
    before = table_counts(engine)
    wrong = run_cli("bounces", "fetch", filled.url(), env={**env, "CAMPAIGN_IMAP_PASSWORD": "a-wrong-imap-password"})
    assert wrong.exit_code == 1 and "refused the login of 'bounces'" in wrong.output
    assert "a-wrong-imap-password" not in wrong.output
    cases = {
        "imap://bounces@mail.example.com/INBOX": "only for a loopback host",
        f"imap://bounces:{PASSWORD}@127.0.0.1:{filled.imap_port}/INBOX": "holds a password",
        "https://mail.example.com/": "not an IMAP URL",
        "imaps://mail.example.com/INBOX": "needs a user and a host",
    }
    for url, message in cases.items():
        result = run_cli("bounces", "fetch", url, env=env)
        assert result.exit_code == 2 and message in result.output, (url, result.output)
        assert PASSWORD not in result.output
    missing = run_cli("bounces", "fetch", filled.url(), env={**env, "CAMPAIGN_IMAP_PASSWORD": ""})
    assert missing.exit_code == 2 and "CAMPAIGN_IMAP_PASSWORD is not set" in missing.output
    no_folder = run_cli("bounces", "fetch", filled.url("Nowhere"), env=env)
    assert no_folder.exit_code == 2 and "IMAP folder 'Nowhere'" in no_folder.output
    assert table_counts(engine) == before and filled.count("INBOX") == 12


def test_the_scheduler_polls_the_mailbox(run_cli: CliRun, engine: Engine, env: Env, filled: ImapServer) -> None:
    result = run_cli("scheduler", "run", "--once", "--bounces", filled.url(), env=env)
    assert result.exit_code == 0, result.output
    assert filled.count("INBOX") == 0 and filled.count("Processed") == 12
    assert len(rows(engine, "SELECT id FROM bounce")) == 12
    assert states(engine)["user0@example.com"] == "bounced"


def test_fetch_refuses_control_characters_in_what_it_sends(run_cli: CliRun, engine: Engine, env: Env,
                                                           filled: ImapServer) -> None:
    """A user name (or a folder, or a password) with CR/LF would end the IMAP command and start another of the
    URL's choosing (`a1 LOGOUT`, or worse): refused before connecting, exit 2, the password never shown."""
    before = table_counts(engine)
    port = filled.imap_port
    cases = {
        f"imap://bounces%0D%0Aa1%20LOGOUT@127.0.0.1:{port}/INBOX": "the IMAP user name 'bounces\\r\\na1 LOGOUT'",
        f"imap://bounces%00@127.0.0.1:{port}/INBOX": "holds a control character",
        f"imap://bounces@127.0.0.1:{port}/IN%1BBOX": "use a plain ASCII folder name",
    }
    for url, message in cases.items():
        result = run_cli("bounces", "fetch", url, env=env)
        assert result.exit_code == 2 and message in result.output, (url, result.output)
    leaky = f"{PASSWORD}\r\na2 DELETE INBOX"
    result = run_cli("bounces", "fetch", filled.url(), env={**env, "CAMPAIGN_IMAP_PASSWORD": leaky})
    assert result.exit_code == 2 and "CAMPAIGN_IMAP_PASSWORD holds a control character" in result.output
    assert PASSWORD not in result.output
    result = run_cli("bounces", "fetch", filled.url(), "--move-to", "Done\r\na3 LOGOUT", env=env)
    assert result.exit_code == 2 and "--move-to" in result.output
    assert table_counts(engine) == before and filled.count("INBOX") == 12


@pytest.mark.parametrize("script", [silent, dripping], ids=["silent", "dripping"])
def test_fetch_ends_when_the_server_stalls(engine: Engine, env: Env, script: Script,
                                           fake_imap: Callable[[Script], FakeImap],  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes the connection and says nothing, or drips its greeting a byte at a time (each read
    gets a byte in time: only a deadline on the whole answer ends it), cannot hold `bounces fetch` (nor the
    scheduler that runs it): a clear error (a CampaignError: exit 1), within the time allowed. The fetch is
    given short waits (production's: 30 s, 300 s)."""
    monkeypatch.setenv("CAMPAIGN_IMAP_PASSWORD", env["CAMPAIGN_IMAP_PASSWORD"])
    server = fake_imap(script)
    started = time.monotonic()
    with pytest.raises(CampaignError) as err:
        bounces.fetch(engine, server.url(), "tester", times=ImapTimes(wait=1.0, exchange=2.0))
    took = time.monotonic() - started
    assert err.value.exit_code == 1
    assert f"IMAP server 127.0.0.1:{server.port} did not answer in time (nothing for 1 s, or no whole answer " \
        "within 2 s)" in str(err.value)
    assert took < 6, took


def test_what_the_imap_server_says_is_shown_with_secrets_masked(run_cli: CliRun, engine: Engine, env: Env,
                                                                fake_imap: Callable[[Script], FakeImap],  # noqa: F811
                                                                ) -> None:
    """What an IMAP server answers is shown in the error (it helps), and goes through the one redaction step
    first: a server echoing the password or the bounce key shows neither."""
    said = f"for {PASSWORD} with {KEY} and {PASSWORD.encode().hex()}"
    refused = fake_imap(answering({"LOGIN": "{tag} NO [AUTHENTICATIONFAILED] wrong password " + PASSWORD}))
    result = run_cli("bounces", "fetch", refused.url(), env=env)
    assert result.exit_code == 1 and "refused the login of 'bounces': [AUTHENTICATIONFAILED] wrong password ***" \
        in result.output
    no_folder = fake_imap(answering({"SELECT": "{tag} NO [NONEXISTENT] no folder INBOX " + said}))
    result2 = run_cli("bounces", "fetch", no_folder.url(), env=env)
    assert result2.exit_code == 2 and "IMAP folder 'INBOX' on 127.0.0.1: [NONEXISTENT] no folder INBOX for *** " \
        "with ***" in result2.output
    broken = fake_imap(answering({"UID": "{tag} BAD \x1b[31m" + said}))
    result3 = run_cli("bounces", "fetch", broken.url(), env=env)
    assert result3.exit_code == 1 and "UID command error: BAD" in result3.output and "for *** with ***" in \
        result3.output
    for secret in (PASSWORD, KEY):
        assert secret not in result.output + result2.output + result3.output
    assert "\x1b" not in result3.output


def test_fetch_leaves_a_message_too_large_in_the_folder(run_cli: CliRun, engine: Engine, env: Env,
                                                        filled: ImapServer, smtpd: SmtpServer) -> None:
    """A message above the cap (as the server announces its size) is listed as too large, never fetched, and
    left in the folder; the others are taken in and moved."""
    last = next(iter(send(run_cli, env, smtpd, wave="reminder").values()))
    filled.append([bm.postfix(bm.padded(last, 11 * MiB))])
    result = run_cli("bounces", "fetch", filled.url(), "--json", env=env)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["messages"], got["new"], got["moved"], got["outcomes"]["too_large"]) == (13, 12, 12, 1)
    (large,) = [r for r in got["listed"] if r["outcome"] == "too_large"]
    assert large["why"].startswith("larger than 10 MiB") and large["why"].endswith("left in the folder")
    assert filled.count("INBOX") == 1 and filled.count("Processed") == 12
