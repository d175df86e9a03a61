"""Internationalized addresses end to end (SPEC §3): import stores the normalized form, suppression matches
it whatever form it was given in, and sending reaches an IDN domain through any server (as its A-label)
and a UTF-8 local part through a server that offers SMTPUTF8 — and records a relay without it as `failed`
(not bounced, not suppressed) while the rest of the wave goes out. On a real SMTP server (aiosmtpd), on
SQLite and PostgreSQL."""
# ruff: noqa: F811  -- the imported fixtures smtpd and smtpd_factory are, by design, parameters of the tests

from __future__ import annotations

import email
import json
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign.delivery.transport import Envelope, SmtpTransport, parse_url, send_all_sync
from tests.conftest import CliRun
from tests.smtpd import Received, SmtpServer, smtpd, smtpd_factory  # noqa: F401  (fixtures)
from tests.test_send import ACCOUNTS, DEVICES, SLUG, definition

IDN = "pat@bücher.example"  # an IDN domain, an ASCII local part
IDN_ALABEL = "pat@xn--bcher-kva.example"
UTF8 = "用户@例子.example"  # RFC 6531: a UTF-8 local part
INTERNATIONAL = (
    f"i01,{IDN},Pat Müller,de-DE,Europe/Berlin,DE\n"
    f"i02,{UTF8},山田 太郎,ja-JP,Asia/Tokyo,JP\n"
    "i03,Bo@XN--BCHER-KVA.EXAMPLE,Bo Becker,de-AT,Europe/Vienna,AT\n"  # stored as Bo@bücher.example
)
INTERNATIONAL_DEVICES = "".join(f"e{i:02d},i{i:02d},Küche,Echo Show 10,do_not_send\n" for i in (1, 2, 3))


def rows(engine: Engine, sql: str, **params: object) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


def parse(raw: bytes) -> EmailMessage:
    """As a reader that speaks RFC 6532 reads it: a header section with raw UTF-8 is UTF-8."""
    head = raw.partition(b"\r\n\r\n")[0]
    msg = (email.message_from_bytes(raw, policy=default) if head.isascii()
           else email.message_from_string(raw.decode("utf-8"), policy=default))
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.fixture
def ready(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path) -> None:
    """The 40 plain accounts of test_send and the three international ones, each with one affected device."""
    result = run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS + INTERNATIONAL)))
    assert result.exit_code == 0, result.output
    result = run_cli("import", "devices", str(write_file("d.csv", DEVICES + INTERNATIONAL_DEVICES)))
    assert result.exit_code == 0, result.output
    result = run_cli("create", str(definition(tmp_path)))
    assert result.exit_code == 0, result.output


def send(run_cli: CliRun, server: SmtpServer) -> None:
    result = run_cli("send", SLUG, "--wave", "notice", "--workers", "1", env={"CAMPAIGN_SMTP_URL": server.url})
    assert result.exit_code == 0, result.output


def notice(run_cli: CliRun) -> dict[str, int]:
    result = run_cli("status", SLUG, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["waves"]["notice"]  # type: ignore[no-any-return]


def by_recipient(server: SmtpServer) -> dict[str, Received]:
    got = {m.recipients[0]: m for m in server.messages}
    assert all(len(m.recipients) == 1 for m in server.messages) and len(got) == len(server.messages)
    return got


def test_import_stores_the_normalized_forms(engine: Engine, ready: None) -> None:
    got = dict(rows(engine, "SELECT id, email FROM account WHERE id LIKE 'i%' ORDER BY id"))
    assert got == {"i01": IDN, "i02": UTF8, "i03": "Bo@bücher.example"}


def test_import_refuses_what_email_validator_refuses(run_cli: CliRun, engine: Engine,
                                                     write_file: Callable[..., Path]) -> None:
    path = write_file("a.csv", "account_id,email,name,locale,timezone,country\n"
                               f"i01,{IDN},Pat,de-DE,Europe/Berlin,DE\n"
                               "i02,someone@bücher..example,X,de-DE,Europe/Berlin,DE\n"
                               "i03,someone@example.test,X,de-DE,Europe/Berlin,DE\n")
    result = run_cli("import", "accounts", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: email: 'someone@bücher..example' is not a valid email address" in result.stderr
    assert f"{path}:4: email: 'someone@example.test' is not a valid email address: " \
           "The part after the @-sign is a special-use or reserved name" in result.stderr
    assert rows(engine, "SELECT COUNT(*) FROM account") == [(0,)]


def test_suppression_matches_whatever_form_it_was_given_in(run_cli: CliRun, engine: Engine, ready: None,
                                                           smtpd_factory: Callable[..., SmtpServer]) -> None:
    # Suppressed as an A-label, lower case: the account imported as Bo@XN--BCHER-KVA.EXAMPLE is the same person.
    result = run_cli("suppress", "add", "bo@xn--bcher-kva.example", "--reason", "asked us not to")
    assert result.exit_code == 0, result.output
    # ... and pat, given as an A-label, is the stored pat@bücher.example; giving its U-label again adds nothing.
    assert run_cli("suppress", "add", IDN_ALABEL, "--reason", "asked").exit_code == 0
    again = run_cli("suppress", "add", "PAT@BÜCHER.EXAMPLE", "--reason", "asked again")
    assert again.exit_code == 0, again.output
    assert sorted(e for (e,) in rows(engine, "SELECT email FROM suppression")) == ["bo@bücher.example", IDN]
    server = smtpd_factory(smtputf8=True)
    send(run_cli, server)
    assert {e: s for e, s in rows(engine, "SELECT email, state FROM delivery WHERE account_id IN ('i01', 'i03')")} \
        == {IDN: "suppressed", "Bo@bücher.example": "suppressed"}
    assert not {IDN_ALABEL, "Bo@xn--bcher-kva.example"} & set(by_recipient(server))
    counts = notice(run_cli)
    assert (counts["sent"], counts["suppressed"]) == (41, 2)


def test_send_through_a_server_with_smtputf8(run_cli: CliRun, engine: Engine, ready: None,
                                             smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(smtputf8=True)
    send(run_cli, server)
    counts = notice(run_cli)
    assert (counts["sent"], counts["failed"], counts["bounced"]) == (43, 0, 0)
    got = by_recipient(server)
    # The IDN domain goes out as its A-label, in the envelope and in To:, and needs no SMTPUTF8.
    idn = got[IDN_ALABEL]
    assert idn.mail_options == ()
    assert idn.data.isascii()
    to = parse(idn.data)["To"]
    assert [(a.display_name, a.addr_spec) for a in to.addresses] == [("Pat Müller", IDN_ALABEL)]
    assert "Bo@xn--bcher-kva.example" in got
    # The UTF-8 local part goes out over SMTPUTF8, raw in the envelope and in an RFC 6532 To: header.
    utf8 = got[UTF8]
    assert utf8.mail_options == ("SMTPUTF8",)
    msg = parse(utf8.data)
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [("山田 太郎", UTF8)]
    assert f"<{UTF8}>".encode() in utf8.data
    assert str(msg["Subject"]) and msg.get_content_type() == "multipart/alternative"
    # Plain addresses are as before: no SMTPUTF8.
    assert got["user0@example.com"].mail_options == ()
    stored = dict(rows(engine, "SELECT account_id, state FROM delivery WHERE account_id LIKE 'i%'"))
    assert stored == {"i01": "sent", "i02": "sent", "i03": "sent"}


def test_send_through_a_server_without_smtputf8(run_cli: CliRun, engine: Engine, ready: None,
                                                smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(smtputf8=False)
    send(run_cli, server)
    got = by_recipient(server)
    assert IDN_ALABEL in got and "Bo@xn--bcher-kva.example" in got  # the A-label works everywhere
    assert got[IDN_ALABEL].data.isascii()
    assert not any(not r.isascii() for m in server.messages for r in m.recipients)
    # The UTF-8 local part cannot go through this relay: failed with the reason, not bounced, not suppressed.
    ((state, error, attempts),) = rows(engine, "SELECT state, last_error, attempts FROM delivery "
                                               "WHERE account_id = 'i02'")
    assert state == "failed" and attempts == 1
    assert "SMTPUTF8" in str(error) and UTF8 in str(error)
    assert rows(engine, "SELECT COUNT(*) FROM suppression") == [(0,)]
    # The rest of the wave went out, and the wave did not pause.
    counts = notice(run_cli)
    assert (counts["sent"], counts["failed"], counts["bounced"], counts["pending"]) == (42, 1, 0, 0)
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["state"] != "paused"


# --- the transport alone ---------------------------------------------------------------------------


def raw_message(to: str) -> bytes:
    return (f"From: <notices@example.com>\r\nTo: <{to}>\r\nSubject: hi\r\n\r\nHello.\r\n").encode()


def test_transport_without_smtputf8(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(smtputf8=False)
    transport = SmtpTransport(parse_url(server.url), concurrency=1, timeout=5)  # one after another, in order
    envelopes = [Envelope("notices@example.com", (a,), raw_message(a), f"<{n}@example.com>")
                 for n, a in enumerate([UTF8, IDN, "anna@example.com"])]
    refused, idn, plain = send_all_sync(transport, envelopes)
    assert refused.status == "failed" and refused.code is None
    assert "SMTPUTF8" in refused.detail and UTF8 in refused.detail
    assert (idn.status, plain.status) == ("sent", "sent")
    assert [(m.recipients, m.mail_options) for m in server.messages] == [
        ((IDN_ALABEL,), ()), (("anna@example.com",), ())]


def test_transport_with_smtputf8(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(smtputf8=True)
    transport = SmtpTransport(parse_url(server.url), concurrency=1, timeout=5)  # one after another, in order
    envelopes = [Envelope("notices@example.com", (a,), raw_message(a), f"<{n}@example.com>")
                 for n, a in enumerate([UTF8, IDN])]
    assert [o.status for o in send_all_sync(transport, envelopes)] == ["sent", "sent"]
    assert [(m.recipients, m.mail_options) for m in server.messages] == [
        ((UTF8,), ("SMTPUTF8",)), ((IDN_ALABEL,), ())]
    assert server.messages[0].data == raw_message(UTF8)  # the message itself as it was given
