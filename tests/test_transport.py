"""The transports against a real SMTP server on loopback (aiosmtpd), a real Maildir, and the URL rules."""
# ruff: noqa: F811  -- the imported fixtures smtpd and smtpd_factory are, by design, parameters of the tests

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest

from campaign.config import Config
from campaign.delivery import pipelining
from campaign.delivery.transport import (
    Envelope,
    MaildirTransport,
    Outcome,
    RecordingTransport,
    SmtpTransport,
    Transport,
    TransportError,
    TransportURL,
    dot_stuffed,
    make_transport,
    parse_url,
    send_all,
    send_all_sync,
    wire_ready,
)
from campaign.errors import CampaignError, ConfigError
from tests.conftest import IN_CI
from tests.ports import free_port
from tests.smtpd import (  # noqa: F401  (smtpd_factory is a fixture)
    CLOSING,
    HANGUP,
    NO_SUCH_USER,
    STALL,
    TEMPFAIL,
    SmtpServer,
    Stage,
    smtpd_factory,
)

SENDER = "notices@example.com"
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def smtpd(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """Each SMTP test twice: against a server that offers PIPELINING (RFC 2920: MAIL, RCPT and DATA go out
    together) and against one that does not (each command waits for its reply)."""
    with SmtpServer(pipelining=request.param) as server:
        yield server


def message(n: int = 0) -> bytes:
    """A message in wire form (CRLF, no line-leading dot), as MessageBuilder makes them: the fast path."""
    return (f"From: <{SENDER}>\r\nTo: <someone@example.com>\r\nSubject: notice {n}\r\n"
            f"Message-ID: <{n}@example.com>\r\n\r\nHello {n}.\r\n").encode()


def envelope(*to: str, n: int = 0) -> Envelope:
    return Envelope(SENDER, tuple(to or ("alice@example.com",)), message(n), f"<{n}@example.com>")


def smtp(server: SmtpServer, concurrency: int = 1, timeout: float = 5.0, query: str = "",
         user: str | None = None, password: str | None = None) -> SmtpTransport:
    return SmtpTransport(parse_url(server.url + query), user, password, concurrency=concurrency, timeout=timeout)


def send_each(transport: Transport, *envelopes: Envelope) -> list[Outcome]:
    """Send one after the other within one opening of the transport."""

    async def run() -> list[Outcome]:
        async with transport:
            return [await transport.send(e) for e in envelopes]

    return asyncio.run(run())


# --- the URL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("smtp://mail.example.com", TransportURL("smtp", "mail.example.com", 25, "require")),
    ("smtp://mail.example.com:587", TransportURL("smtp", "mail.example.com", 587, "require")),
    ("SMTP://Mail.Example.COM:587/", TransportURL("smtp", "mail.example.com", 587, "require")),
    ("smtp://mail.example.com?starttls=opportunistic", TransportURL("smtp", "mail.example.com", 25, "opportunistic")),
    ("smtp://mail.example.com?verify=off", TransportURL("smtp", "mail.example.com", 25, "require", verify=False)),
    ("smtp://bob@mail.example.com:587", TransportURL("smtp", "mail.example.com", 587, "require", user="bob")),
    ("smtp://bob%40corp@mail.example.com", TransportURL("smtp", "mail.example.com", 25, "require", user="bob@corp")),
    ("smtp://127.0.0.1:2525", TransportURL("smtp", "127.0.0.1", 2525, "opportunistic")),
    ("smtp://127.8.9.10", TransportURL("smtp", "127.8.9.10", 25, "opportunistic")),
    ("smtp://localhost?starttls=off", TransportURL("smtp", "localhost", 25, "off")),
    ("smtp://[::1]:1025?starttls=require", TransportURL("smtp", "::1", 1025, "require")),
    ("smtps://mail.example.com", TransportURL("smtps", "mail.example.com", 465)),
    ("smtps://mail.example.com:2465?verify=off", TransportURL("smtps", "mail.example.com", 2465, verify=False)),
    ("maildir:./outbox", TransportURL("maildir", path=Path("outbox"))),
    ("maildir:/var/mail/campaign", TransportURL("maildir", path=Path("/var/mail/campaign"))),
])
def test_parse_url_accepts(url: str, expected: TransportURL) -> None:
    parsed = parse_url(url)
    assert parsed == expected
    assert parse_url(str(parsed)) == parsed  # str() is a canonical, parseable form


@pytest.mark.parametrize(("url", "says"), [
    ("", "not a mail URL"),
    ("mail.example.com", "not a mail URL"),
    ("http://mail.example.com", "unknown scheme 'http'"),
    ("lmtp://mail.example.com", "unknown scheme"),
    (f"smtp://bob:{PASSWORD}@mail.example.com", "CAMPAIGN_SMTP_PASSWORD"),
    ("smtp://bob:@mail.example.com", "CAMPAIGN_SMTP_PASSWORD"),
    ("smtp://mail.example.com?starttls=off", "plaintext"),
    ("smtp://10.0.0.1?starttls=off", "plaintext"),
    ("smtp://localhost.example.com?starttls=off", "plaintext"),
    ("smtp://mail.example.com?starttls=maybe", "starttls must be"),
    ("smtp://mail.example.com?verify=no", "verify must be on or off"),
    ("smtp://mail.example.com?timeout=3", "unknown parameter 'timeout'"),
    (f"smtp://mail.example.com?password={PASSWORD}", "unknown parameter 'password'"),
    ("smtp://mail.example.com?starttls=require&starttls=off", "given twice"),
    ("smtps://mail.example.com?starttls=require", "smtps:// is TLS from the start"),
    ("smtp://", "no host"),
    ("smtp://:25", "no host"),
    ("smtp://mail.example.com:99999", "port"),
    ("smtp://mail.example.com:smtp", "port"),
    ("smtp://[::1", "not a valid URL"),
    ("smtp://[::1:25", "not a valid URL"),
    ("smtp://mail.example.com/relay", "unexpected path"),
    ("smtp://mail.example.com#x", "fragment"),
    ("maildir:", "needs a directory"),
])
def test_parse_url_refuses(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(url)
    assert says in str(info.value)
    assert PASSWORD not in str(info.value)


def test_make_transport_from_config(tmp_path: Path) -> None:
    maildir = make_transport(Config(smtp_url=f"maildir:{tmp_path / 'box'}"))
    assert isinstance(maildir, MaildirTransport) and maildir.path == tmp_path / "box"

    t = make_transport(Config(smtp_url="smtp://mail.example.com:587", smtp_user="bob", smtp_password=PASSWORD),
                       concurrency=3)
    assert isinstance(t, SmtpTransport)
    assert (t.url.port, t.user, t.concurrency) == (587, "bob", 3)

    with pytest.raises(ConfigError, match="CAMPAIGN_SMTP_USER"):
        make_transport(Config(smtp_url="smtp://mail.example.com", smtp_password=PASSWORD))


def test_envelope_and_outcome_values() -> None:
    with pytest.raises(ValueError, match="recipient"):
        Envelope(SENDER, (), b"x", "<1@x>")
    assert "data" not in repr(envelope())  # a repr never dumps a whole message
    long = Outcome("transient", 451, "line one\r\nline two " + "x" * 1000)
    assert "\n" not in long.detail and "\r" not in long.detail
    assert len(long.detail) <= 500 and long.detail.startswith("line one line two")


# --- SMTP: what the server answers, and how it is classified -------------------------------------------


def test_sent_byte_for_byte(smtpd: SmtpServer) -> None:
    [outcome] = send_each(smtp(smtpd), envelope("alice@example.com", "bob@example.com"))
    assert (outcome.status, outcome.code) == ("sent", 250)
    [got] = smtpd.messages
    assert got.sender == SENDER
    assert got.recipients == ("alice@example.com", "bob@example.com")
    assert got.data == message(0)


@pytest.mark.parametrize(("data", "ready"), [
    (message(0), True),
    (b"Subject: x\r\n\r\n.leading dot\r\n", True),  # stuffed on the way
    (b"Subject: x\r\n\r\nbare LF\n", False),
    (b"Subject: x\r\n\r\nbare CR\rhere\r\n", False),
    (b"Subject: x\r\n\r\nno line end at the end", False),
])
def test_wire_ready(data: bytes, ready: bool) -> None:
    assert wire_ready(data) is ready


def test_dot_stuffing() -> None:
    assert dot_stuffed(b".a\r\n..b\r\nc.\r\n.\r\n") == b"..a\r\n...b\r\nc.\r\n..\r\n"


@pytest.mark.parametrize("body", [
    b"Hello.\r\n.leading dot survives\r\n..and two\r\n.\r\n",
    b"Hello.\nbare line ends\nare repaired\n.and stuffed\n",
])
def test_dots_are_stuffed_and_bare_line_ends_repaired(smtpd: SmtpServer, body: bytes) -> None:
    data = b"Subject: odd\r\nMessage-ID: <odd@example.com>\r\n\r\n" + body
    [outcome] = send_each(smtp(smtpd), Envelope(SENDER, ("alice@example.com",), data, "<odd@example.com>"))
    assert outcome.status == "sent"
    [got] = smtpd.messages
    assert got.data == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("text", ["Hallo Zoë,\nx" + "y" * 300, "Hallo Zoë,\n.ein Punkt am Zeilenanfang\n."])
def test_a_built_notice_goes_byte_for_byte_with_its_size(smtpd_factory: Callable[..., SmtpServer],
                                                         text: str) -> None:
    from campaign.notices.mime import MessageBuilder, Parts

    parts = Parts("Zoë Ünal", "zoe@example.com", "Änderung", text, "<p>Hallo Zoë</p>", "<m1@example.com>",
                  dt.datetime(2025, 3, 1, tzinfo=dt.UTC))
    data = MessageBuilder(SENDER).build(parts)
    assert wire_ready(data)
    small = smtpd_factory(data_size_limit=len(data) - 1)  # announces SIZE: the declared size is checked
    [refused] = send_each(smtp(small), Envelope(SENDER, ("zoe@example.com",), data, "<m1@example.com>"))
    assert refused.status == "permanent" and refused.code == 552
    roomy = smtpd_factory(data_size_limit=len(data) + 16)  # (aiosmtpd counts a stuffed dot too)
    [outcome] = send_each(smtp(roomy), Envelope(SENDER, ("zoe@example.com",), data, "<m1@example.com>"))
    assert outcome.status == "sent"
    [got] = roomy.messages
    assert got.data == data


def test_tempfail_then_accepted_on_the_same_connection(smtpd: SmtpServer) -> None:
    smtpd.script("alice@example.com", [TEMPFAIL])
    first, second = send_each(smtp(smtpd), envelope(), envelope())
    assert (first.status, first.code) == ("transient", 451)
    assert "try later" in first.detail
    assert second.status == "sent"
    assert len(smtpd.messages) == 1
    assert smtpd.connections == 1  # a 4xx reply does not cost the connection


def test_no_such_user_is_permanent(smtpd: SmtpServer) -> None:
    smtpd.script("nobody@example.com", [NO_SUCH_USER])
    bounced, after = send_each(smtp(smtpd), envelope("nobody@example.com"), envelope("alice@example.com"))
    assert (bounced.status, bounced.code) == ("permanent", 550)
    assert bounced.detail == "550 5.1.1 no such user"
    assert after.status == "sent"
    assert smtpd.connections == 1


def test_partial_refusal_is_permanent(smtpd: SmtpServer) -> None:
    # aiosmtplib raises nothing when only some recipients are refused: the transport reads its dict.
    smtpd.script("nobody@example.com", [NO_SUCH_USER])
    [outcome] = send_each(smtp(smtpd), envelope("alice@example.com", "nobody@example.com"))
    assert (outcome.status, outcome.code) == ("permanent", 550)
    assert "nobody@example.com" in outcome.detail and "1 of 2" in outcome.detail
    assert [m.recipients for m in smtpd.messages] == [("alice@example.com",)]


def test_every_recipient_refused_any_5xx_is_permanent(smtpd: SmtpServer) -> None:
    smtpd.script("a@example.com", [TEMPFAIL])
    smtpd.script("b@example.com", [NO_SUCH_USER])
    [outcome] = send_each(smtp(smtpd), envelope("a@example.com", "b@example.com"))
    assert (outcome.status, outcome.code) == ("permanent", 550)
    assert smtpd.messages == []


@pytest.mark.parametrize(("at", "reply", "status"), [
    ("MAIL", "553 5.1.8 sender rejected", "permanent"),
    ("MAIL", "452 4.3.1 insufficient storage", "transient"),
    ("DATA", "554 5.6.0 message rejected", "permanent"),
    ("DATA", "451 4.7.1 greylisted", "transient"),
])
def test_replies_to_mail_and_data(smtpd: SmtpServer, at: str, reply: str, status: str) -> None:
    smtpd.script(None if at == "DATA" else SENDER, [reply], at=at)  # type: ignore[arg-type]
    outcome, after = send_each(smtp(smtpd), envelope(), envelope())
    assert (outcome.status, outcome.code, outcome.detail) == (status, int(reply[:3]), reply)
    assert after.status == "sent"
    assert smtpd.connections == 1


def test_auth_required_stops_the_run(smtpd: SmtpServer) -> None:
    # A 530 would otherwise bounce (and suppress) every address for what is a configuration mistake.
    smtpd.script(SENDER, ["530 5.7.0 Authentication required"], at="MAIL")
    with pytest.raises(TransportError, match="CAMPAIGN_SMTP_USER"):
        send_each(smtp(smtpd), envelope())


@pytest.mark.parametrize("at", ["RCPT", "DATA"])
def test_421_is_transient_and_the_next_send_reconnects(smtpd: SmtpServer, at: str) -> None:
    smtpd.script(None, [CLOSING], at=at)  # type: ignore[arg-type]
    closed, after = send_each(smtp(smtpd), envelope(), envelope())
    assert (closed.status, closed.code) == ("transient", 421)
    assert "closing" in closed.detail
    assert after.status == "sent"
    assert smtpd.connections == 2
    assert len(smtpd.messages) == 1


@pytest.mark.parametrize("at", ["RCPT", "DATA"])
def test_hang_up_is_transient_and_the_next_send_works(smtpd: SmtpServer, at: str) -> None:
    smtpd.script(None, [HANGUP], at=at)  # type: ignore[arg-type]
    dropped, after = send_each(smtp(smtpd), envelope(), envelope())
    assert (dropped.status, dropped.code) == ("transient", None)
    assert "dropped" in dropped.detail
    assert after.status == "sent"
    assert smtpd.connections == 2


def test_idle_connection_dropped_by_the_server_is_retried_once(smtpd: SmtpServer) -> None:
    # The server dropped a pooled connection before MAIL: nothing was accepted, so going again is safe.
    transport = smtp(smtpd)

    async def run() -> list[Outcome]:
        async with transport:
            first = await transport.send(envelope(n=1))
            smtpd.script(None, [HANGUP], at="MAIL")
            return [first, await transport.send(envelope(n=2))]

    assert [o.status for o in asyncio.run(run())] == ["sent", "sent"]
    assert smtpd.connections == 2
    assert [m.data for m in smtpd.messages] == [message(1), message(2)]


def test_hang_up_after_data_on_a_reused_connection_is_not_retried(smtpd: SmtpServer) -> None:
    # Once DATA has gone out the server may have kept the message: sending again could deliver it twice.
    transport = smtp(smtpd)

    async def run() -> Outcome:
        async with transport:
            await transport.send(envelope(n=1))
            smtpd.script(None, [HANGUP], at="DATA")
            return await transport.send(envelope(n=2))

    assert asyncio.run(run()).status == "transient"
    assert smtpd.connections == 1


@pytest.mark.parametrize("at", ["MAIL", "RCPT", "DATA"])
def test_stall_times_out_as_transient(smtpd: SmtpServer, at: Stage) -> None:
    smtpd.script(None, [STALL], at=at)
    started = time.monotonic()
    stalled, after = send_each(smtp(smtpd, timeout=0.5), envelope(), envelope())
    assert (stalled.status, stalled.code) == ("transient", None)
    assert "within 0.5 s" in stalled.detail
    assert time.monotonic() - started < 3
    assert after.status == "sent"
    assert smtpd.connections == 2


def test_waiting_at_the_gate_is_not_the_servers_delay(smtpd: SmtpServer) -> None:
    """The per-command timeout is the server's: a connection held at the gate (commits behind) for longer
    than it still sends its message."""
    async def gate() -> None:
        await asyncio.sleep(1.0)

    async def run() -> Outcome:
        async with smtp(smtpd, timeout=0.5) as transport:
            return await transport.send(envelope(), gate)

    outcome = asyncio.run(run())
    assert outcome.status == "sent", outcome.detail
    assert len(smtpd.messages) == 1


def test_commands_go_together_only_to_a_server_that_offers_pipelining(smtpd: SmtpServer) -> None:
    outcomes = send_each(smtp(smtpd), envelope("alice@example.com", "bob@example.com", n=1), envelope(n=2))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    together = [r for r in smtpd.reads if b"MAIL FROM:" in r and b"DATA\r\n" in r]
    if smtpd.pipelining:  # MAIL, both RCPTs and DATA in one read; then the second message's three
        assert len(together) == 2, smtpd.reads
        assert b"RCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" in together[0]
    else:
        assert together == []
    assert [m.data for m in smtpd.messages] == [message(1), message(2)]


class _TakesDataWithoutRecipients:
    """A server that offers PIPELINING, refuses every recipient, and still answers DATA with 354 (RFC 2920
    3.1 allows it; the client must then end the data with a lone dot). Records what came after the 354."""

    def __init__(self) -> None:
        self.after_354: list[bytes] = []
        self.connections = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 rogue.test ready\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-rogue.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            elif verb in (b"MAIL", b"RSET"):
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == b"RCPT":
                writer.write(b"550 5.1.1 no such user\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    self.after_354.append(data)
                self.after_354.append(b".")
                writer.write(b"554 5.5.1 no valid recipients\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 5.5.2 not implemented\r\n")
        writer.close()


def test_data_taken_although_every_recipient_was_refused() -> None:
    rogue = _TakesDataWithoutRecipients()

    async def run() -> list[Outcome]:
        server = await asyncio.start_server(rogue.session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, SmtpTransport(parse_url(f"smtp://127.0.0.1:{port}"), timeout=5.0) as transport:
            return [await transport.send(envelope("nobody@example.com", n=n)) for n in (1, 2)]

    outcomes = asyncio.run(run())
    assert [(o.status, o.code) for o in outcomes] == [("permanent", 550)] * 2
    assert outcomes[0].detail == "550 5.1.1 no such user"
    assert rogue.after_354 == [b".", b"."]  # an empty message each time, never the notice
    assert rogue.connections == 1  # and the session stayed in step


class _SilentAfterData:
    """A server that takes MAIL, RCPT and DATA, reads the message, and says nothing after its final dot for the
    first `silent` messages (a relay stuck writing to its queue); answers 250 after the others."""

    def __init__(self, silent: int) -> None:
        self.silent, self.connections, self.taken = silent, 0, 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 slow.test ready\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-slow.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET"):
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                self.taken += 1
                if self.taken <= self.silent:
                    await reader.read()  # until the client hangs up
                    break
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
        writer.close()


def test_no_reply_after_the_data_times_out_as_transient() -> None:
    """The reply to the message's final dot has the same deadline as every other (one watch per connection,
    `SmtpClient._expect`): the send is not left waiting, and the next message goes on a new connection."""
    slow = _SilentAfterData(silent=1)

    async def run() -> tuple[list[Outcome], float]:
        server = await asyncio.start_server(slow.session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, SmtpTransport(parse_url(f"smtp://127.0.0.1:{port}"), timeout=0.5) as transport:
            started = time.monotonic()
            first = await transport.send(envelope(n=1))
            waited = time.monotonic() - started
            return [first, await transport.send(envelope(n=2))], waited

    (stalled, after), waited = asyncio.run(run())
    assert (stalled.status, stalled.code) == ("transient", None)
    assert "within 0.5 s" in stalled.detail
    assert 0.5 <= waited < 2.0
    assert after.status == "sent"
    assert slow.connections == 2


def test_an_idle_connection_outlives_the_reply_timeout() -> None:
    """The watch times replies only: a connection idle in the pool longer than the timeout is not closed by it,
    and a pause between messages is nobody's delay."""
    slow = _SilentAfterData(silent=0)

    async def run() -> list[Outcome]:
        server = await asyncio.start_server(slow.session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, SmtpTransport(parse_url(f"smtp://127.0.0.1:{port}"), timeout=0.3) as transport:
            first = await transport.send(envelope(n=1))
            await asyncio.sleep(0.8)
            return [first, await transport.send(envelope(n=2)), await transport.send(envelope(n=3))]

    assert [o.status for o in asyncio.run(run())] == ["sent"] * 3
    assert slow.connections == 1


def test_connection_refused_is_transient() -> None:
    url = parse_url(f"smtp://127.0.0.1:{free_port()}")
    [outcome] = send_each(SmtpTransport(url, timeout=2), envelope())
    assert (outcome.status, outcome.code) == ("transient", None)
    assert "could not connect" in outcome.detail


@pytest.mark.parametrize("bad", [
    "alice@example.com> NOTIFY=NEVER",  # aiosmtplib would quietly send to alice@example.com
    "alice@example.com, mallory@example.com",  # ... to alice only
    "alice\r\nRSET@example.com",  # ... to aliceRSET@example.com
    "Alice <alice@example.com>",
    "alice smith@example.com",  # aiosmtplib refuses this one itself
])
def test_invalid_address_is_permanent_and_never_rewritten(smtpd: SmtpServer, bad: str) -> None:
    refused, good = send_each(smtp(smtpd), envelope(bad), envelope("bob@example.com"))
    assert (refused.status, refused.code) == ("permanent", None)
    assert "invalid address" in refused.detail and "\n" not in refused.detail
    assert good.status == "sent"
    assert [m.recipients for m in smtpd.messages] == [("bob@example.com",)]


def test_connections_are_reused_within_the_pool(smtpd: SmtpServer) -> None:
    smtpd.script("r7@example.com", [NO_SUCH_USER])
    envelopes = [envelope(f"r{i}@example.com", n=i) for i in range(30)]
    outcomes = send_all_sync(smtp(smtpd, concurrency=2), envelopes)
    assert [o.status for o in outcomes] == ["permanent" if i == 7 else "sent" for i in range(30)]
    assert smtpd.connections == 2  # two at once, each reused for about 15 messages
    assert sorted(m.data for m in smtpd.messages) == sorted(message(i) for i in range(30) if i != 7)


def test_one_after_another_uses_one_connection_of_the_pool(smtpd: SmtpServer) -> None:
    send_each(smtp(smtpd, concurrency=4), *(envelope(n=i) for i in range(5)))
    assert smtpd.connections == 1
    assert len(smtpd.messages) == 5


def test_connections_are_closed_on_exit(smtpd: SmtpServer) -> None:
    send_all_sync(smtp(smtpd, concurrency=3), [envelope(n=i) for i in range(9)])
    deadline = time.monotonic() + 2
    while smtpd.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert smtpd.active == 0


# --- login and secrets -------------------------------------------------------------------------------


def test_login(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(users={"bob": PASSWORD})
    [outcome] = send_each(smtp(server, user="bob", password=PASSWORD), envelope())
    assert outcome.status == "sent"
    assert server.messages[0].login == "bob"


def test_login_refused_raises_once_without_the_password(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(users={"bob": "another-password"})
    transport = smtp(server, concurrency=2, user="bob", password=PASSWORD)
    errors: list[TransportError] = []

    async def run() -> None:
        async with transport:
            for _ in range(3):
                try:
                    await transport.send(envelope())
                except TransportError as exc:
                    errors.append(exc)

    asyncio.run(run())
    assert len(errors) == 3 and isinstance(errors[0], CampaignError)
    assert "login" in str(errors[0]) and "535" in str(errors[0]) and "CAMPAIGN_SMTP_PASSWORD" in str(errors[0])
    assert server.connections == 1  # not hammering the server with a wrong password
    assert server.messages == []
    for text in (str(errors[0]), repr(errors[0]), repr(transport), str(transport)):
        assert PASSWORD not in text


def test_a_relay_echoing_a_secret_is_redacted(smtpd_factory: Callable[..., SmtpServer],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 1: every reply passes the one redaction step — the SMTP password this transport holds,
    and the secrets of the environment (a bounce key), as written and base64-encoded; one printable line."""
    import base64
    key = "bounce-key-0123456789abcdef0123456789"
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY", key)
    server = smtpd_factory(users={"bob": PASSWORD})
    b64 = base64.b64encode(PASSWORD.encode()).decode()
    server.script("user1@example.com", [f"550 5.1.1 you said {PASSWORD} \x1b[31m and {key}"])
    server.script("user2@example.com", [f"451 4.3.0 AUTH {b64} later"])
    outcomes = send_each(smtp(server, user="bob", password=PASSWORD), envelope("user1@example.com"),
                         envelope("user2@example.com", n=2))
    assert [o.status for o in outcomes] == ["permanent", "transient"]
    for o in outcomes:
        assert PASSWORD not in o.detail and key not in o.detail and b64 not in o.detail and "\x1b" not in o.detail
    assert "you said *** [31m and ***" in outcomes[0].detail
    assert "AUTH *** later" in outcomes[1].detail


def test_login_refused_through_send_all(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(users={"bob": "another-password"})
    with pytest.raises(TransportError) as info:
        send_all_sync(smtp(server, concurrency=2, user="bob", password=PASSWORD), [envelope(n=i) for i in range(4)])
    assert PASSWORD not in str(info.value)


def test_no_password_in_repr_or_outcomes(smtpd_factory: Callable[..., SmtpServer]) -> None:
    server = smtpd_factory(users={"bob": PASSWORD})
    # A server that echoes the password back must not make it appear in an outcome.
    server.script(None, [f"550 5.7.1 {PASSWORD} is not welcome here"])
    transport = smtp(server, user="bob", password=PASSWORD)
    refused, sent = send_each(transport, envelope(), envelope())
    assert (refused.status, refused.code, sent.status) == ("permanent", 550, "sent")
    assert PASSWORD not in refused.detail and "***" in refused.detail
    for text in (repr(transport), str(transport), repr(refused), repr(sent)):
        assert PASSWORD not in text
    assert "password='***'" in repr(transport)


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (made with the openssl command)."""
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("CI=true but the openssl command is not installed: the TLS tests must run in CI")
        pytest.skip("the openssl command is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def test_starttls_required_and_verified(smtpd_factory: Callable[..., SmtpServer], certificate: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust our test certificate only
    server = smtpd_factory(tls=server_tls(certificate), users={"bob": PASSWORD})
    [outcome] = send_each(smtp(server, query="?starttls=require", user="bob", password=PASSWORD), envelope())
    assert outcome.status == "sent"
    assert server.messages[0].tls and server.messages[0].login == "bob"


def test_opportunistic_starttls_on_loopback_by_default(smtpd_factory: Callable[..., SmtpServer],
                                                       certificate: tuple[Path, Path]) -> None:
    server = smtpd_factory(tls=server_tls(certificate))
    [outcome] = send_each(smtp(server, query="?verify=off"), envelope())
    assert outcome.status == "sent" and server.messages[0].tls


def test_starttls_off_on_loopback(smtpd_factory: Callable[..., SmtpServer], certificate: tuple[Path, Path]) -> None:
    server = smtpd_factory(tls=server_tls(certificate))
    [outcome] = send_each(smtp(server, query="?starttls=off"), envelope())
    assert outcome.status == "sent" and not server.messages[0].tls


def test_unverifiable_certificate_stops_the_run(smtpd_factory: Callable[..., SmtpServer],
                                                certificate: tuple[Path, Path]) -> None:
    server = smtpd_factory(tls=server_tls(certificate))
    with pytest.raises(TransportError, match="verify=off"):
        send_each(smtp(server, query="?starttls=require"), envelope())
    assert server.messages == []
    deadline = time.monotonic() + 2
    while not server.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [type(e).__name__ for e in server.errors] == ["TLSSetupException"]  # the server saw us hang up


def test_starttls_required_but_not_offered_stops_the_run(smtpd: SmtpServer) -> None:
    transport = smtp(smtpd, concurrency=2, query="?starttls=require")
    with pytest.raises(TransportError, match="STARTTLS") as info:
        send_each(transport, envelope())
    assert "cannot use smtp://127.0.0.1" in str(info.value)
    assert smtpd.messages == []


def test_implicit_tls(smtpd_factory: Callable[..., SmtpServer], certificate: tuple[Path, Path]) -> None:
    server = smtpd_factory(tls=server_tls(certificate), implicit_tls=True)
    transport = SmtpTransport(parse_url(f"smtps://127.0.0.1:{server.port}?verify=off"), timeout=5)
    [outcome] = send_each(transport, envelope())
    assert outcome.status == "sent" and server.messages[0].tls


# --- Maildir and recording ---------------------------------------------------------------------------


def test_maildir_writes_each_message_into_new(tmp_path: Path) -> None:
    box = tmp_path / "outbox"
    envelopes = [envelope(n=i) for i in range(25)]
    outcomes = send_all_sync(MaildirTransport(box), envelopes)
    assert {o.status for o in outcomes} == {"sent"}
    files = sorted((box / "new").iterdir())
    assert len(files) == 25 and len({f.name for f in files}) == 25
    assert list((box / "tmp").iterdir()) == [] and (box / "cur").is_dir()
    assert sorted(f.read_bytes() for f in files) == sorted(e.data for e in envelopes)
    assert {o.detail for o in outcomes} == {f"new/{f.name}" for f in files}


def test_recording_transport_keeps_envelopes_and_order() -> None:
    transport = RecordingTransport(
        respond=lambda e: Outcome("permanent", 550, "no") if "x@" in e.recipients[0] else Outcome("sent"),
        concurrency=3)
    envelopes = [envelope("x@example.com" if i == 2 else f"r{i}@example.com", n=i) for i in range(6)]
    outcomes = asyncio.run(send_all(transport, envelopes))
    assert [o.status for o in outcomes] == ["sent", "sent", "permanent", "sent", "sent", "sent"]
    assert sorted(transport.envelopes, key=lambda e: e.message_id) == sorted(envelopes, key=lambda e: e.message_id)
    assert transport.opened == 1


def test_a_send_that_ends_after_the_transport_closed_leaves_no_connection_open(smtpd: SmtpServer) -> None:
    """A send still under way when the transport closes (the send loop stopping on an error) — here one
    waiting for the only connection — closes its connection when it ends: nothing would close it later (a
    socket left to the garbage collector)."""
    transport = smtp(smtpd, concurrency=1)

    async def run() -> list[Outcome | BaseException]:
        async with transport:
            sends = [asyncio.create_task(transport.send(envelope(n=i))) for i in range(2)]
            await asyncio.sleep(0)  # both under way: the first holds the connection, the second waits for it
        return await asyncio.gather(*sends, return_exceptions=True)

    _, second = asyncio.run(asyncio.wait_for(run(), 10))
    assert isinstance(second, Outcome) and second.status == "transient"  # it waited: not sent, no connection
    assert "closed" in second.detail
    deadline = time.monotonic() + 5
    while smtpd.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert smtpd.active == 0


def test_the_private_names_the_fast_path_reaches_are_there(smtpd: SmtpServer) -> None:
    """The transport reaches inside aiosmtplib (pyproject pins it to the range tested): its protocol's command
    lock, loop, buffer and reply parser, the client's EHLO helper, and a protocol whose class can be swapped.
    A release that renames one fails here, loudly, instead of in a send."""
    import inspect

    from aiosmtplib.protocol import SMTPProtocol

    assert callable(getattr(aiosmtplib.SMTP, "_ehlo_or_helo_if_needed", None))
    assert inspect.iscoroutinefunction(aiosmtplib.SMTP._ehlo_or_helo_if_needed)
    assert callable(getattr(SMTPProtocol, "_read_response_from_buffer", None))

    async def connected() -> tuple[type, object, object, object]:
        client = pipelining.SmtpClient(hostname="127.0.0.1", port=smtpd.port, start_tls=False)
        await client.connect()
        try:
            p = client.protocol
            return type(p), getattr(p, "_command_lock", None), getattr(p, "_loop", None), getattr(p, "_buffer", None)
        finally:
            await client.quit()

    kind, lock, loop, buffer = asyncio.run(connected())
    assert kind is pipelining.PipeliningProtocol  # the swap took
    assert lock is not None and loop is not None and isinstance(buffer, bytearray)
