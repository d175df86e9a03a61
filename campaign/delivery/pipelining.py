"""The SMTP fast path: aiosmtplib's client and protocol, taught to send a message already in wire form without
parsing it again, and to write MAIL, RCPT and DATA at once when the server offers PIPELINING (RFC 2920).

It reaches inside aiosmtplib (`_command_lock`, `_buffer`, `_read_response_from_buffer`, `_ehlo_or_helo_if_needed`,
and a protocol whose class is swapped after connecting): pyproject.toml pins aiosmtplib to the range this is tested
against, and tests/test_transport.py fails loudly if one of those names is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
)
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.typing import Default

from campaign.addresses import is_plain_ascii
from campaign.delivery.envelope import Gate

__all__ = ["PipeliningProtocol", "SmtpClient", "dot_stuffed", "wire_ready"]

_plain_address = is_plain_ascii


def wire_ready(data: bytes) -> bool:
    """Whether every line of `data` ends in CRLF (no bare CR or LF, a line break at the end): what
    `MessageBuilder` makes. Such a message needs only dot-stuffing before it goes after DATA."""
    return data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line that starts with a dot gets another one."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class PipeliningProtocol(SMTPProtocol):
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


class SmtpClient(aiosmtplib.SMTP):
    """One connection; knows whether the current transaction got as far as the message data.

    `transaction` is aiosmtplib's `sendmail` without its per-message address parsing and without two
    regular-expression passes over the message (the SIZE count and the DATA normalization) that a message
    already in wire form does not need: for 11 KiB notices those took more CPU than the rest of the SMTP
    exchange. When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA go out in one write and
    their replies come back together: two round trips a message instead of four."""

    data_started = False
    timed_out = False  # the last transaction's connection was closed by the watch: no reply in time
    _deadline: float | None = None  # by when (the loop's clock) the server must reply; None: no reply awaited
    _watch: asyncio.TimerHandle | None = None

    def _expect(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """The server has `timeout` seconds from now for its next reply. One timer per connection checks it
        (`_check`), set again only when it fires: a transaction costs a float's update per command instead of
        a Timeout and a timer of its own (about a tenth of the SMTP exchange's CPU, 2026-12-08)."""
        if timeout is None:
            return
        self._deadline = deadline = loop.time() + timeout
        if self._watch is None:
            self._watch = loop.call_at(deadline, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """The watch: close the connection when a reply is overdue; otherwise wait for the deadline now set,
        if any (an idle connection's watch ends; its next command starts it again)."""
        self._watch = None
        deadline = self._deadline
        if deadline is None:
            return
        if loop.time() < deadline:
            self._watch = loop.call_at(deadline, self._check, loop)
            return
        self.timed_out = True  # the transaction that waits sees the connection lost, and says why
        self._deadline = None
        self.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._deadline = None
        super().close()

    async def connect(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        reply = await super().connect(*args, **kwargs)
        if type(self.protocol) is SMTPProtocol:
            # aiosmtplib makes its own protocol object, with no way to name another class: give this one
            # the subclass's behaviour (`PipeliningProtocol` adds methods only, no state of its own at creation).
            self.protocol.__class__ = PipeliningProtocol
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
        pipelined = isinstance(protocol, PipeliningProtocol) and self.supports_extension("pipelining")
        loop = asyncio.get_running_loop()
        expect = self._expect
        self.timed_out = False
        try:
            expect(loop, timeout)
            if pipelined:
                assert isinstance(protocol, PipeliningProtocol)
                rcpts = [b"RCPT TO:<" + r.encode("ascii") + b">\r\n" for r in recipients]
                replies = await protocol.pipeline(b"MAIL " + b" ".join(mail) + b"\r\n" + b"".join(rcpts)
                                                  + b"DATA\r\n", len(recipients) + 2)
                reply, rcpt_replies = replies[0], replies[1:len(recipients) + 1]
                started = replies[-1] if len(replies) == len(recipients) + 2 else None
                taken = [r for r in rcpt_replies if r.code in (SMTPStatus.completed, SMTPStatus.will_forward)]
                if started is not None and started.code == SMTPStatus.start_input and (
                        reply.code != SMTPStatus.completed or not taken):
                    # RFC 2920 3.1: DATA taken although no recipient was: end it with an empty message.
                    expect(loop, timeout)
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
                    expect(loop, timeout)
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
                expect(loop, timeout)
                reply = await self.execute_command(b"DATA", timeout=None)
            if reply.code != SMTPStatus.start_input:
                raise SMTPDataError(reply.code, reply.message)
            if gate is not None:
                self._deadline = None  # waiting for the commits is not the server's delay
                await gate()
            protocol = self.protocol
            if protocol is None:
                raise SMTPServerDisconnected("Connection lost")
            self.data_started = True  # from here on, the server may take the message
            protocol.write(dot_stuffed(data) + b".\r\n")
            expect(loop, timeout)
            reply = await protocol.read_response(timeout=None)
            if reply.code != SMTPStatus.completed:
                raise SMTPDataError(reply.code, reply.message)
        except SMTPServerDisconnected:
            if self.timed_out:  # the watch closed the connection: the server did not answer in time
                raise SMTPReadTimeoutError("Timed out waiting for server response") from None
            raise
        except (SMTPResponseException, SMTPRecipientsRefused):
            self._deadline = None
            with contextlib.suppress(ConnectionError, SMTPResponseException):
                await self.rset(timeout=timeout)  # reset the envelope for the next message
            raise
        finally:
            self._deadline = None
        return refused, reply.message

    async def mail(self, sender: str, /, *, options: Iterable[str] | None = None, encoding: str = "ascii",
                   timeout: Any = Default.token) -> SMTPResponse:
        if options or not _plain_address(sender):
            return await super().mail(sender, options=options, encoding=encoding, timeout=timeout)
        return await self._plain_command(b"MAIL", b"FROM:<", sender, (SMTPStatus.completed,), SMTPSenderRefused,
                                         timeout)

    async def rcpt(self, recipient: str, /, *, options: Iterable[str] | None = None, encoding: str = "ascii",
                   timeout: Any = Default.token) -> SMTPResponse:
        if options or not _plain_address(recipient):
            return await super().rcpt(recipient, options=options, encoding=encoding, timeout=timeout)
        return await self._plain_command(b"RCPT", b"TO:<", recipient, (SMTPStatus.completed, SMTPStatus.will_forward),
                                         SMTPRecipientRefused, timeout)

    async def _plain_command(self, verb: bytes, before: bytes, address: str, accepted: tuple[int, ...],
                             refused: type[SMTPSenderRefused | SMTPRecipientRefused], timeout: Any) -> SMTPResponse:
        """MAIL or RCPT for a plain ASCII address, as aiosmtplib writes it but without parsing the address again
        for each message."""
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(verb, before + address.encode("ascii") + b">", timeout=timeout)
        if response.code not in accepted:
            raise refused(response.code, response.message, address)
        return response

    async def data(self, message: str | bytes, /, **kwargs: Any) -> SMTPResponse:
        self.data_started = True
        return await super().data(message, **kwargs)

