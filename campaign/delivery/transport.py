"""Every outside mail system behind one small interface: SMTP (aiosmtplib), a Maildir, a recording; the one
named by CAMPAIGN_SMTP_URL (`make_transport`), and sending a few messages through it (`send_all`).

The pieces: `envelope` (Envelope, Outcome, the Transport interface), `transport_url` (the URL rules), `smtp` and
its fast path `pipelining`, `maildir`, `recording`. Their names are handed on from here; what a transport
promises is written with the interface, in `campaign.delivery.envelope`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from campaign.config import Config
from campaign.delivery.envelope import Envelope, Gate, LoginFailed, Outcome, Status, Transport, TransportError
from campaign.delivery.maildir import MaildirTransport
from campaign.delivery.pipelining import dot_stuffed, wire_ready
from campaign.delivery.recording import RecordingTransport
from campaign.delivery.smtp import SmtpTransport, bad_address
from campaign.delivery.transport_url import TransportURL, parse_url
from campaign.results import Fields
from campaign.urls import is_loopback

__all__ = [
    "Envelope",
    "Gate",
    "LoginFailed",
    "MaildirTransport",
    "Outcome",
    "RecordingTransport",
    "SmtpTransport",
    "Status",
    "Transport",
    "TransportError",
    "TransportURL",
    "bad_address",
    "dot_stuffed",
    "is_loopback",
    "make_transport",
    "parse_url",
    "probe",
    "send_all",
    "send_all_sync",
    "wire_ready",
]


def make_transport(config: Config, concurrency: int = 4, timeout: float = 30.0) -> Transport:
    """The transport that config.smtp_url names, with the configured login."""
    url = parse_url(config.smtp_url)
    if url.scheme == "maildir":
        assert url.path is not None
        return MaildirTransport(url.path)
    return SmtpTransport(url, config.smtp_user, config.smtp_password, concurrency=concurrency, timeout=timeout)


@dataclass(frozen=True)
class Probe(Fields):
    """What opening a session with the configured relay found: `problem` is None when it worked, "unreachable"
    (no session: refused, timed out, TLS failed) or "login" (the relay did not take our login); `detail` says
    what happened in words."""

    where: str
    problem: str | None = None
    detail: str = ""


def probe(config: Config, timeout: float = 15.0) -> Probe:
    """`campaign check --connect`: connect to CAMPAIGN_SMTP_URL, EHLO, STARTTLS, log in, QUIT; nothing is sent.
    A Maildir outbox has nothing to connect to (its folder is checked when a message is written)."""
    url = parse_url(config.smtp_url)
    if url.scheme == "maildir":
        return Probe(str(url), None, "a Maildir outbox: nothing to connect to")
    transport = SmtpTransport(url, config.smtp_user, config.smtp_password, concurrency=1, timeout=timeout)

    async def go() -> tuple[Outcome | None, bool]:
        return await asyncio.wait_for(transport.probe(), timeout * 2)  # connect and login each have `timeout`

    try:
        outcome, encrypted = asyncio.run(go())
    except LoginFailed as exc:
        return Probe(str(url), "login", str(exc))
    except TransportError as exc:
        return Probe(str(url), "unreachable", str(exc))
    except TimeoutError:
        return Probe(str(url), "unreachable", f"no answer from {url.hostport} within {timeout * 2:g} s")
    if outcome is not None:
        return Probe(str(url), "unreachable", outcome.detail)
    tls = "encrypted" if encrypted else "not encrypted"
    login = f"logged in as {transport.user!r}" if transport.user else "no login configured"
    return Probe(str(url), None, f"session opened ({tls}, {login}) and closed; nothing sent")


async def send_all(transport: Transport, envelopes: Iterable[Envelope]) -> list[Outcome]:
    """Open the transport, send every envelope (at most `transport.concurrency` at once), outcomes in order."""
    results: dict[int, Outcome] = {}
    numbered = enumerate(envelopes)

    async def worker() -> None:
        for index, envelope in numbered:  # one iterator shared by every worker
            results[index] = await transport.send(envelope)

    async with transport:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, transport.concurrency)):
                    group.create_task(worker())
        except BaseExceptionGroup as errors:
            raise errors.exceptions[0] from None
    return [results[i] for i in range(len(results))]


def send_all_sync(transport: Transport, envelopes: Iterable[Envelope]) -> list[Outcome]:
    """`send_all` for synchronous callers such as `campaign test-send`."""
    return asyncio.run(send_all(transport, envelopes))
