"""Every outside mail system behind one small interface: SMTP (aiosmtplib), a Maildir, a recording.

A transport is an async context manager with one method, `send(envelope) -> Outcome`. It never raises
for what happened to one message — that is classified as "sent", "transient" (try again later) or
"permanent" (the recipient's server refused it). It raises `TransportError` only for what no retry
can fix (a refused login, a server that cannot do the TLS the URL asks for), once, to stop the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, cast, get_args
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.typing import Default

from campaign.addresses import is_plain_ascii, needs_smtputf8, wire_form
from campaign.config import Config, redact_url
from campaign.errors import CampaignError, ConfigError
from campaign.redaction import hold, redact
from campaign.urls import is_loopback

__all__ = [
    "Envelope",
    "MaildirTransport",
    "Outcome",
    "RecordingTransport",
    "SmtpTransport",
    "Status",
    "Transport",
    "TransportError",
    "TransportURL",
    "bad_address",
    "is_loopback",
    "make_transport",
    "parse_url",
    "send_all",
    "send_all_sync",
]

# "failed": this relay cannot take this message (e.g. an RFC 6531 address without SMTPUTF8); the address is
# not at fault, so it is not suppressed, and retrying the same relay would not help.
Status = Literal["sent", "transient", "permanent", "failed"]
StartTLS = Literal["require", "opportunistic", "off"]
Scheme = Literal["smtp", "smtps", "maildir"]

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
MAX_DETAIL = 500
URL_FORMS = "smtp://HOST[:PORT][?starttls=require|opportunistic|off][&verify=off], smtps://HOST[:PORT], maildir:PATH"
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")


class TransportError(CampaignError):
    """The mail system cannot be used at all (login refused, TLS impossible): stop, fix, run again."""


# --- the URL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransportURL:
    """A parsed CAMPAIGN_SMTP_URL; `str()` gives back its canonical form (never a secret)."""

    scheme: Scheme
    host: str = ""
    port: int = 0
    starttls: StartTLS | None = None  # smtp:// only; smtps:// is TLS from the first byte
    verify: bool = True
    user: str | None = None
    path: Path | None = None  # maildir: only

    @property
    def loopback(self) -> bool:
        return bool(self.host) and is_loopback(self.host)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        query = []
        if self.scheme == "smtp":
            query.append(f"starttls={self.starttls}")
        if not self.verify:
            query.append("verify=off")
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        return f"{self.scheme}://{user}{self.hostport}" + ("?" + "&".join(query) if query else "")


def parse_url(url: str) -> TransportURL:
    """Parse CAMPAIGN_SMTP_URL, refusing (ConfigError) anything unsafe or unknown."""
    # Shown without its query: a value there (a misplaced password, say) is never echoed.
    shown = redact_url(url.strip().split("?", 1)[0].split("#", 1)[0])
    scheme, sep, rest = url.strip().partition(":")
    scheme = scheme.lower()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"CAMPAIGN_SMTP_URL {shown!r}: {why}")

    if not sep:
        raise bad(f"not a mail URL; expected one of {URL_FORMS}")
    if scheme == "maildir":
        path = rest[2:] if rest.startswith("//") else rest
        if not path.strip():
            raise bad("maildir: needs a directory, e.g. maildir:./outbox")
        return TransportURL(scheme="maildir", path=Path(path).expanduser())
    if scheme not in DEFAULT_PORTS:
        raise bad(f"unknown scheme {scheme!r}; expected one of {URL_FORMS}")

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # "Invalid IPv6 URL" (smtp://[::1)
        raise bad(f"not a valid URL ({exc}); expected one of {URL_FORMS}") from None
    if parts.password is not None:
        raise bad("a password may not be written in the URL; set CAMPAIGN_SMTP_PASSWORD instead")
    host = parts.hostname or ""
    if not host:
        raise bad("no host")
    if not _HOST_RE.match(host):
        raise bad(f"invalid host {host!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if parts.path not in ("", "/"):
        raise bad(f"unexpected path {parts.path!r}")
    if parts.fragment:
        raise bad("unexpected #fragment")

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in params:
            raise bad(f"{key} is given twice")
        if key not in ("starttls", "verify"):
            raise bad(f"unknown parameter {key!r} (known: starttls, verify)")
        params[key] = value.lower()

    verify = params.get("verify", "on")
    if verify not in ("on", "off"):
        raise bad(f"verify must be on or off, not {verify!r}")
    loopback = is_loopback(host)
    starttls: StartTLS | None = None
    if scheme == "smtps":
        if "starttls" in params:
            raise bad("smtps:// is TLS from the start; starttls applies to smtp:// only")
    else:
        value = params.get("starttls", "opportunistic" if loopback else "require")
        if value not in get_args(StartTLS):
            raise bad(f"starttls must be require, opportunistic or off, not {value!r}")
        starttls = cast(StartTLS, value)
        if starttls == "off" and not loopback:
            raise bad(f"starttls=off would send mail in plaintext over the network to {host}; "
                      "it is allowed to a loopback host only")
    user = unquote(parts.username) if parts.username else None
    return TransportURL(scheme=cast(Scheme, scheme), host=host, port=port, starttls=starttls,
                        verify=verify == "on", user=user)


# --- what goes in, what comes out ------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """One message on its way: SMTP envelope addresses and the complete message (CRLF line endings)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes = field(repr=False)
    message_id: str = ""
    wire: bool = False  # `data` is known to be in wire form (`wire_ready`): MessageBuilder made it

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if isinstance(self.recipients, str):
            raise TypeError("recipients must be a tuple of addresses, not a string")


@dataclass(frozen=True)
class Outcome:
    """What became of one message. `detail` is one line of at most 500 characters."""

    status: Status
    code: int | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        # What a relay said goes through the one redaction step before anything stores or shows it (G11).
        object.__setattr__(self, "detail", redact(self.detail, MAX_DETAIL))

    @property
    def ok(self) -> bool:
        return self.status == "sent"


Gate = Callable[[], Awaitable[None]]


class Transport(Protocol):
    """Opens connections on enter, closes them on exit, and sends; `send` may run concurrently."""

    @property
    def concurrency(self) -> int:
        """How many `send` calls make progress at once; more simply wait their turn."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        """Send one message. `gate`, when given, is awaited once just before the message can be accepted
        (on SMTP: after the server said 354, before the data goes): the caller's chance to make sure it can
        record the outcome (see `campaign.delivery.sending`). An exception from it abandons the message unsent."""
        ...


# --- SMTP ------------------------------------------------------------------------------------------


def wire_ready(data: bytes) -> bool:
    """Whether every line of `data` ends in CRLF (no bare CR or LF, a line break at the end): what
    `MessageBuilder` makes. Such a message needs only dot-stuffing before it goes after DATA."""
    return data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line that starts with a dot gets another one."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class _Protocol(SMTPProtocol):
    """aiosmtplib's protocol, able to read the replies to several commands written at once (RFC 2920).

    aiosmtplib reads one reply per command and ignores what arrives before the next command is sent; a
    pipelined group's replies may come in one segment or several, so while a group is out, every byte is
    kept and parsed here until all its replies are in."""

    _group: asyncio.Future[list[SMTPResponse]] | None = None
    _wanted = 0
    _replies: list[SMTPResponse]

    async def pipeline(self, commands: bytes, replies: int) -> list[SMTPResponse]:
        """Write `commands` (`replies` of them, CRLF-terminated) at once and return their replies in order;
        fewer when the server closed the connection after some (a 421 to RCPT, say): the caller reads them
        in order and takes a missing one for the connection lost. None at all raises SMTPServerDisconnected."""
        if self._command_lock is None or not self.is_connected:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            group = self._group = self._loop.create_future()
            self._wanted, self._replies = replies, []
            try:
                self.write(commands)
                return await group
            finally:
                self._group = None

    def data_received(self, data: bytes) -> None:
        group = self._group
        if group is None:
            super().data_received(data)
            return
        if group.done():
            return  # more than the group's replies: not for us (as aiosmtplib ignores unsolicited data)
        self._buffer.extend(data)
        try:
            if len(self._buffer) > MAX_RESPONSE_LENGTH * self._wanted:
                raise SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")
            while len(self._replies) < self._wanted:
                reply = self._read_response_from_buffer()
                if reply is None:
                    return
                self._replies.append(reply)
        except SMTPResponseException as exc:
            del self._buffer[:]
            self._fail_group(group, exc)
            return
        group.set_result(self._replies)

    @staticmethod
    def _fail_group(group: asyncio.Future[list[SMTPResponse]], exc: BaseException) -> None:
        group.set_exception(exc)
        group.exception()  # marked retrieved: nobody may await it if the connection goes first

    def _group_failed(self, message: str, cause: BaseException | None = None) -> None:
        if self._group is None or self._group.done():
            return
        if self._replies:  # what the server said before it went: the caller sees where it stopped
            self._group.set_result(self._replies)
            return
        exc = SMTPServerDisconnected(message)
        exc.__cause__ = cause
        self._fail_group(self._group, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._group_failed("Connection lost", exc)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._group_failed("Unexpected EOF received")
        return super().eof_received()


class _Client(aiosmtplib.SMTP):
    """One connection; knows whether the current transaction got as far as the message data.

    `transaction` is aiosmtplib's `sendmail` without its per-message address parsing and without two
    regular-expression passes over the message (the SIZE count and the DATA normalization) that a message
    already in wire form does not need: for 11 KiB notices those took more CPU than the rest of the SMTP
    exchange. When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA go out in one write and
    their replies come back together: two round trips a message instead of four."""

    data_started = False

    async def connect(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        reply = await super().connect(*args, **kwargs)
        if type(self.protocol) is SMTPProtocol:
            # aiosmtplib makes its own protocol object, with no way to name another class: give this one
            # the subclass's behaviour (`_Protocol` adds methods only, no state of its own at creation).
            self.protocol.__class__ = _Protocol
        return reply

    async def transaction(self, sender: str, recipients: list[str], data: bytes, utf8: bool,
                          timeout: float, gate: Gate | None = None,
                          wire: bool = False) -> tuple[dict[str, SMTPResponse], str]:
        """MAIL, RCPT for each recipient, DATA; RSET after a refusal (as `sendmail` does). `gate` is
        awaited after the 354, before the data. Returns the refused recipients and the final reply. Raises
        like `sendmail`."""
        if not (wire or wire_ready(data)) or not all(map(_plain_address, recipients)) or not _plain_address(sender):
            if gate is not None:
                await gate()
            options = ["SMTPUTF8"] if utf8 else None
            return await self.sendmail(sender, recipients, data, mail_options=options, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        if utf8 and not self.supports_extension("smtputf8"):
            raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
        mail = [b"FROM:<" + sender.encode("ascii") + b">"]
        if self.supports_extension("size"):
            mail.append(b"SIZE=%d" % len(data))  # RFC 1870: the octets as sent, CRLFs included
        if utf8:
            mail.append(b"SMTPUTF8")
        protocol = self.protocol
        pipelined = isinstance(protocol, _Protocol) and self.supports_extension("pipelining")
        loop = asyncio.get_running_loop()

        def arm(limit: asyncio.Timeout) -> None:
            # The server has `timeout` seconds for each reply, on one Timeout for the whole transaction (`wait_for`
            # costs a future, a timer and an extra turn of the loop for each command). The deadline moves only
            # when less than `timeout` is left, to twice that from now: a reply gets between one and two times
            # `timeout`, and a transaction sets its timer about once instead of once a command.
            if timeout is not None:
                now, when = loop.time(), limit.when()
                if when is None or when - now < timeout:
                    limit.reschedule(now + 2 * timeout)

        try:
            async with asyncio.timeout(None) as limit:
                arm(limit)
                if pipelined:
                    assert isinstance(protocol, _Protocol)
                    rcpts = [b"RCPT TO:<" + r.encode("ascii") + b">\r\n" for r in recipients]
                    replies = await protocol.pipeline(b"MAIL " + b" ".join(mail) + b"\r\n" + b"".join(rcpts)
                                                      + b"DATA\r\n", len(recipients) + 2)
                    reply, rcpt_replies = replies[0], replies[1:len(recipients) + 1]
                    started = replies[-1] if len(replies) == len(recipients) + 2 else None
                    taken = [r for r in rcpt_replies if r.code in (SMTPStatus.completed, SMTPStatus.will_forward)]
                    if started is not None and started.code == SMTPStatus.start_input and (
                            reply.code != SMTPStatus.completed or not taken):
                        # RFC 2920 3.1: DATA taken although no recipient was: end it with an empty message.
                        arm(limit)
                        protocol.write(b".\r\n")
                        await protocol.read_response(timeout=None)
                else:
                    reply = await self.execute_command(b"MAIL", *mail, timeout=None)
                if reply.code != SMTPStatus.completed:
                    raise SMTPSenderRefused(reply.code, reply.message, sender)
                refused: dict[str, SMTPResponse] = {}
                for n, rcpt in enumerate(recipients):
                    if pipelined:
                        if n >= len(rcpt_replies):
                            raise SMTPServerDisconnected("Connection lost")
                        reply = rcpt_replies[n]
                    else:
                        arm(limit)
                        reply = await self.execute_command(b"RCPT", b"TO:<" + rcpt.encode("ascii") + b">",
                                                           timeout=None)
                    if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                        refused[rcpt] = reply
                if len(refused) == len(recipients):
                    raise SMTPRecipientsRefused([SMTPRecipientRefused(r.code, r.message, rcpt)
                                                 for rcpt, r in refused.items()])
                if pipelined:
                    if started is None:
                        raise SMTPServerDisconnected("Connection lost")
                    reply = started
                else:
                    arm(limit)
                    reply = await self.execute_command(b"DATA", timeout=None)
                if reply.code != SMTPStatus.start_input:
                    raise SMTPDataError(reply.code, reply.message)
                if gate is not None:
                    limit.reschedule(None)  # waiting for the commits is not the server's delay
                    await gate()
                protocol = self.protocol
                if protocol is None:
                    raise SMTPServerDisconnected("Connection lost")
                self.data_started = True  # from here on, the server may take the message
                protocol.write(dot_stuffed(data) + b".\r\n")
                arm(limit)
                reply = await protocol.read_response(timeout=None)
                if reply.code != SMTPStatus.completed:
                    raise SMTPDataError(reply.code, reply.message)
        except TimeoutError:
            self.close()  # the session is out of step: a reply may still come
            raise SMTPReadTimeoutError("Timed out waiting for server response") from None
        except (SMTPResponseException, SMTPRecipientsRefused):
            with contextlib.suppress(ConnectionError, SMTPResponseException):
                await self.rset(timeout=timeout)  # reset the envelope for the next message
            raise
        return refused, reply.message

    async def mail(self, sender: str, /, *, options: Iterable[str] | None = None, encoding: str = "ascii",
                   timeout: Any = Default.token) -> SMTPResponse:
        if options or not _plain_address(sender):
            return await super().mail(sender, options=options, encoding=encoding, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(b"MAIL", b"FROM:<" + sender.encode("ascii") + b">", timeout=timeout)
        if response.code != SMTPStatus.completed:
            raise SMTPSenderRefused(response.code, response.message, sender)
        return response

    async def rcpt(self, recipient: str, /, *, options: Iterable[str] | None = None, encoding: str = "ascii",
                   timeout: Any = Default.token) -> SMTPResponse:
        if options or not _plain_address(recipient):
            return await super().rcpt(recipient, options=options, encoding=encoding, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(b"RCPT", b"TO:<" + recipient.encode("ascii") + b">", timeout=timeout)
        if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise SMTPRecipientRefused(response.code, response.message, recipient)
        return response

    async def data(self, message: str | bytes, /, **kwargs: Any) -> SMTPResponse:
        self.data_started = True
        return await super().data(message, **kwargs)


_plain_address = is_plain_ascii


def bad_address(envelope: Envelope) -> str | None:
    """The first address aiosmtplib would refuse or silently rewrite (it keeps what parseaddr finds)."""
    for address in (envelope.sender, *envelope.recipients):
        if _plain_address(address):
            continue
        try:
            if parse_address(address) != address:
                return address
            wire_form(address)  # an IDN domain must have an A-label form
        except ValueError:
            return address
    return None


def _once(gate: Gate) -> Gate:
    """`gate`, awaited at most once however often it is called (a stale connection's retry calls it again)."""
    passed = False

    async def once() -> None:
        nonlocal passed
        if not passed:
            await gate()
            passed = True
    return once


def _reply(code: int, message: str) -> str:
    return f"{code} {message}".strip()


class SmtpTransport:
    """A pool of persistent SMTP connections (aiosmtplib), one message at a time on each; MAIL, RCPT and DATA
    pipelined (RFC 2920) when the server offers it."""

    def __init__(self, url: TransportURL, user: str | None = None, password: str | None = None,
                 concurrency: int = 4, timeout: float = 30.0) -> None:
        if url.scheme not in ("smtp", "smtps"):
            raise ValueError(f"SmtpTransport needs an smtp:// or smtps:// URL, not {url}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if password and not (user or url.user):
            raise ConfigError("CAMPAIGN_SMTP_PASSWORD is set but CAMPAIGN_SMTP_USER is not")
        self.url = url
        self.user = user or url.user
        hold(password)
        self.__password = password  # name-mangled, and kept out of repr
        self._concurrency = concurrency
        self.timeout = timeout
        self.connections_opened = 0
        self._clients: list[_Client] = []
        self._pool: asyncio.LifoQueue[_Client] | None = None
        self._fatal: TransportError | None = None
        self._tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        password = "***" if self.__password else None
        return (f"SmtpTransport(url={str(self.url)!r}, user={self.user!r}, password={password!r}, "
                f"concurrency={self._concurrency}, timeout={self.timeout})")

    __str__ = __repr__

    @property
    def concurrency(self) -> int:
        return self._concurrency

    async def __aenter__(self) -> Self:
        self._fatal = None
        self._clients = [self._new_client() for _ in range(self._concurrency)]
        self._pool = asyncio.LifoQueue()  # the connection used last is the one most likely still open
        for client in self._clients:
            self._pool.put_nowait(client)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        clients, self._clients, self._pool = self._clients, [], None
        await asyncio.gather(*(self._quit(c) for c in clients if c.is_connected))
        for client in clients:
            client.close()
        await asyncio.sleep(0)  # let the closed sockets' callbacks run before the loop may end

    async def _quit(self, client: _Client) -> None:
        with contextlib.suppress(SMTPException, OSError):  # saying goodbye is a courtesy
            await client.quit(timeout=min(self.timeout, 5.0))

    def _new_client(self) -> _Client:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            if not self.url.verify:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        start_tls = {"require": True, "off": False, "opportunistic": None, None: False}[self.url.starttls]
        # Credentials are not given to aiosmtplib: we log in ourselves, after checking the connection is encrypted.
        return _Client(hostname=self.url.host, port=self.url.port, timeout=self.timeout,
                       use_tls=self.url.scheme == "smtps", start_tls=start_tls, tls_context=self._tls)

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        if self._fatal is not None:
            raise self._fatal
        if self._pool is None:
            raise RuntimeError("open the transport first: async with transport: ...")
        bad = bad_address(envelope)
        if bad is not None:  # e.g. "a@x, b@y" would go to a@x only, "a\r\nb@x" to ab@x: refuse instead
            return Outcome("permanent", None, f"invalid address {bad!r}: not a plain mailbox (local@domain)")
        pool = self._pool
        client = await pool.get()
        try:
            if self._pool is not pool:  # the transport closed while this send waited: it opens no connection
                return self._transient("not sent: the connections were closed (the send is stopping)")
            return await self._send_on(client, envelope, _once(gate) if gate is not None else None)
        except BaseException:
            client.close()  # cancelled or fatal midway: the connection's state is unknown
            raise
        finally:
            if self._pool is not pool:
                client.close()  # the transport closed while this send went on: nothing else would close it
            pool.put_nowait(client)  # (after a close, for a send still waiting: it stops at once)

    async def _send_on(self, client: _Client, envelope: Envelope, gate: Gate | None) -> Outcome:
        reused = client.is_connected
        if not reused:
            failure = await self._connect(client)
            if failure is not None:
                return failure
        outcome, stale = await self._transaction(client, envelope, reused, gate)
        if stale:
            # A reused connection the server had dropped while idle; nothing was accepted, so go once more.
            failure = await self._connect(client)
            if failure is not None:
                return failure
            outcome, _ = await self._transaction(client, envelope, reused=False, gate=gate)
        return outcome

    def _scrub(self, text: str) -> str:
        return redact(text, MAX_DETAIL)

    def _fail(self, message: str) -> TransportError:
        self._fatal = TransportError(self._scrub(message))
        return self._fatal

    def _transient(self, detail: str, code: int | None = None) -> Outcome:
        return Outcome("transient", code, self._scrub(detail))

    async def _connect(self, client: _Client) -> Outcome | None:
        """Connect, STARTTLS and log in; a transient Outcome if that failed, TransportError if it never will."""
        where = f"{self.url.scheme}://{self.url.hostport}"
        self.connections_opened += 1
        try:
            await client.connect()
            if self.user is not None:
                if client.get_transport_info("sslcontext") is None and not self.url.loopback:
                    raise self._fail(f"refusing to send the SMTP password to {where} over an unencrypted "
                                     "connection: the server did not offer STARTTLS; use ?starttls=require "
                                     "or smtps://")
                await client.login(self.user, self.__password or "")
        except TransportError:
            client.close()
            raise
        except SMTPAuthenticationError as exc:
            client.close()
            raise self._fail(f"SMTP login to {where} as {self.user!r} failed: {_reply(exc.code, exc.message)}; "
                             "check CAMPAIGN_SMTP_USER and CAMPAIGN_SMTP_PASSWORD") from None
        except (SMTPConnectResponseError, SMTPHeloError) as exc:
            client.close()
            if 400 <= exc.code < 500:
                return self._transient(f"{where} is not taking mail now: {_reply(exc.code, exc.message)}", exc.code)
            raise self._fail(f"{where} refused the session: {_reply(exc.code, exc.message)}") from None
        except (SMTPTimeoutError, TimeoutError):
            client.close()
            return self._transient(f"timed out after {self.timeout:g} s connecting to {where}")
        except SMTPConnectError as exc:
            client.close()
            if isinstance(exc.__cause__, ssl.SSLError):
                raise self._tls_failure(where, exc.__cause__) from None
            return self._transient(f"could not connect to {where}: {exc.message}")
        except SMTPServerDisconnected as exc:
            client.close()
            return self._transient(f"{where} closed the connection while opening the session: {exc.message}")
        except SMTPResponseException as exc:  # STARTTLS or AUTH answered with an error
            client.close()
            if 400 <= exc.code < 500:
                return self._transient(f"{where}: {_reply(exc.code, exc.message)}", exc.code)
            raise self._fail(f"{where} refused to open the session: {_reply(exc.code, exc.message)}") from None
        except SMTPException as exc:  # no STARTTLS, no AUTH on offer
            client.close()
            raise self._fail(f"cannot use {where}: {exc.message}") from None
        except ssl.SSLError as exc:
            client.close()
            raise self._tls_failure(where, exc) from None
        except OSError as exc:
            client.close()
            return self._transient(f"could not connect to {where}: {exc}")
        return None

    def _tls_failure(self, where: str, exc: ssl.SSLError) -> TransportError:
        hint = ("; if this server's certificate cannot be verified and you accept that, add ?verify=off"
                if isinstance(exc, ssl.SSLCertVerificationError) else "")
        return self._fail(f"TLS with {where} failed: {exc}{hint}")

    async def _transaction(self, client: _Client, env: Envelope, reused: bool,
                           gate: Gate | None = None) -> tuple[Outcome, bool]:
        """One MAIL/RCPT/DATA transaction; returns the outcome and whether a stale connection should be retried."""
        client.data_started = False
        # An IDN domain goes out as A-labels (any server takes that); only a UTF-8 local part needs SMTPUTF8.
        sender, recipients = wire_form(env.sender), [wire_form(r) for r in env.recipients]
        utf8 = [a for a in (sender, *recipients) if needs_smtputf8(a)]
        try:
            refused, reply = await client.transaction(sender, recipients, env.data, bool(utf8), self.timeout, gate,
                                                      env.wire)
        except SMTPRecipientsRefused as exc:
            pairs = [(r.recipient, r.code, r.message) for r in exc.recipients]
            return self._refused(client, pairs, len(recipients)), False
        except SMTPResponseException as exc:
            if exc.code == 421 or not 400 <= exc.code < 600:
                client.close()  # 421: the server is closing; anything else: the session is out of step
            if exc.code == 530:
                raise self._fail(f"{self.url.hostport} requires authentication ({_reply(exc.code, exc.message)}); "
                                 "set CAMPAIGN_SMTP_USER and CAMPAIGN_SMTP_PASSWORD") from None
            status: Status = "permanent" if 500 <= exc.code < 600 else "transient"
            return Outcome(status, exc.code, self._scrub(_reply(exc.code, exc.message))), False
        except SMTPServerDisconnected as exc:
            client.close()
            if reused and not client.data_started:
                return self._transient("connection dropped"), True
            return self._transient(f"connection to {self.url.hostport} dropped: {exc.message}"), False
        except (SMTPTimeoutError, TimeoutError):
            client.close()
            return self._transient(f"no reply from {self.url.hostport} within {self.timeout:g} s"), False
        except SMTPNotSupported:  # a UTF-8 local part and a relay without SMTPUTF8: not the address's fault
            return Outcome("failed", None, self._scrub(
                f"{', '.join(utf8)}: an address with a UTF-8 local part (RFC 6531) needs SMTPUTF8, which "
                f"{self.url.hostport} does not offer")), False
        except SMTPException as exc:
            client.close()
            return self._transient(f"SMTP error with {self.url.hostport}: {exc.message}"), False
        except ValueError as exc:  # an address that cannot be put on an SMTP command line
            client.close()
            return Outcome("permanent", None, self._scrub(f"invalid address: {exc}")), False
        except OSError as exc:
            client.close()
            return self._transient(f"connection to {self.url.hostport} failed: {exc}"), False
        if refused:  # aiosmtplib raises nothing when only some recipients were refused
            pairs = [(rcpt, resp.code, resp.message) for rcpt, resp in refused.items()]
            return self._refused(client, pairs, len(recipients)), False
        return Outcome("sent", 250, self._scrub(_reply(250, reply))), False

    def _refused(self, client: _Client, pairs: list[tuple[str, int, str]], total: int) -> Outcome:
        """Some or all recipients refused: permanent if any refusal was 5xx, else transient."""
        if any(code == 421 for _, code, _ in pairs):
            client.close()
        if any(code == 530 for _, code, _ in pairs):
            raise self._fail(f"{self.url.hostport} requires authentication; "
                             "set CAMPAIGN_SMTP_USER and CAMPAIGN_SMTP_PASSWORD")
        worst = next((p for p in pairs if 500 <= p[1] < 600), pairs[0])
        status: Status = "permanent" if 500 <= worst[1] < 600 else "transient"
        if total == 1:
            detail = _reply(worst[1], worst[2])
        else:
            refusals = "; ".join(f"{rcpt}: {_reply(code, msg)}" for rcpt, code, msg in pairs)
            detail = f"refused for {len(pairs)} of {total} recipients: {refusals}"
        return Outcome(status, worst[1], self._scrub(detail))


# --- Maildir and recording -------------------------------------------------------------------------


class MaildirTransport:
    """Writes each message into a Maildir (tmp/, then renamed into new/) and sends nothing."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._counter = itertools.count(1)
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
        self._ready = False

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self.path)!r})"

    @property
    def concurrency(self) -> int:
        return 1

    async def __aenter__(self) -> Self:
        self._prepare()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def _prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._ready = True

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        if gate is not None:
            await gate()
        if not self._ready:
            self._prepare()
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{next(self._counter)}.{self._host}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(envelope.data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(tmp, self.path / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Outcome("sent", None, f"new/{name}")


class RecordingTransport:
    """Keeps every envelope in `self.envelopes`; for dry runs and tests. `respond` may script outcomes."""

    def __init__(self, respond: Callable[[Envelope], Outcome] | None = None, concurrency: int = 1) -> None:
        self.envelopes: list[Envelope] = []
        self.respond = respond
        self._concurrency = concurrency
        self.opened = 0

    def __repr__(self) -> str:
        return f"RecordingTransport({len(self.envelopes)} envelopes)"

    @property
    def concurrency(self) -> int:
        return self._concurrency

    async def __aenter__(self) -> Self:
        self.opened += 1
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        if gate is not None:
            await gate()
        self.envelopes.append(envelope)
        return self.respond(envelope) if self.respond else Outcome("sent", None, "recorded")


# --- making and using one --------------------------------------------------------------------------


def make_transport(config: Config, concurrency: int = 4, timeout: float = 30.0) -> Transport:
    """The transport that config.smtp_url names, with the configured login."""
    url = parse_url(config.smtp_url)
    if url.scheme == "maildir":
        assert url.path is not None
        return MaildirTransport(url.path)
    return SmtpTransport(url, config.smtp_user, config.smtp_password, concurrency=concurrency, timeout=timeout)


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
