"""SMTP through aiosmtplib: a pool of persistent connections, each outcome classified (sent, transient,
permanent, failed), a login only over an encrypted connection, and what a relay says redacted before it is kept.
The fast path each connection sends through is `campaign.delivery.pipelining`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType
from typing import Self

from aiosmtplib import (
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.email import parse_address

from campaign.addresses import is_plain_ascii, needs_smtputf8, wire_form
from campaign.delivery.envelope import MAX_DETAIL, Envelope, Gate, LoginFailed, Outcome, Status, TransportError
from campaign.delivery.pipelining import SmtpClient
from campaign.delivery.transport_url import TransportURL
from campaign.errors import ConfigError
from campaign.redaction import hold, redact

__all__ = ["SmtpTransport", "bad_address"]


def bad_address(envelope: Envelope) -> str | None:
    """The first address aiosmtplib would refuse or silently rewrite (it keeps what parseaddr finds)."""
    for address in (envelope.sender, *envelope.recipients):
        if is_plain_ascii(address):
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
        self._clients: list[SmtpClient] = []
        self._pool: asyncio.LifoQueue[SmtpClient] | None = None
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

    async def _quit(self, client: SmtpClient) -> None:
        with contextlib.suppress(SMTPException, OSError):  # saying goodbye is a courtesy
            await client.quit(timeout=min(self.timeout, 5.0))

    def _new_client(self) -> SmtpClient:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            if not self.url.verify:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        start_tls = {"require": True, "off": False, "opportunistic": None, None: False}[self.url.starttls]
        # Credentials are not given to aiosmtplib: we log in ourselves, after checking the connection is encrypted.
        return SmtpClient(hostname=self.url.host, port=self.url.port, timeout=self.timeout,
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

    async def _send_on(self, client: SmtpClient, envelope: Envelope, gate: Gate | None) -> Outcome:
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

    async def probe(self) -> tuple[Outcome | None, bool]:
        """Open one session the way a send does — connect, EHLO, STARTTLS, AUTH — and QUIT, sending nothing.
        Returns (None when all of it worked, else a transient Outcome: the relay cannot be reached now; whether
        the session was encrypted); raises TransportError (LoginFailed for the login) when the relay will never
        be usable as configured."""
        client = self._new_client()
        try:
            failure = await self._connect(client)
            encrypted = failure is None and client.get_transport_info("sslcontext") is not None
            if failure is None:
                await self._quit(client)
            return failure, encrypted
        finally:
            client.close()

    def _scrub(self, text: str) -> str:
        return redact(text, MAX_DETAIL)

    def _fail(self, message: str, kind: type[TransportError] = TransportError) -> TransportError:
        self._fatal = kind(self._scrub(message))
        return self._fatal

    def _transient(self, detail: str, code: int | None = None) -> Outcome:
        return Outcome("transient", code, self._scrub(detail))

    async def _connect(self, client: SmtpClient) -> Outcome | None:
        """Connect, STARTTLS and log in; a transient Outcome if that failed, TransportError if it never will."""
        where = f"{self.url.scheme}://{self.url.hostport}"
        self.connections_opened += 1
        try:
            await client.connect()
            if self.user is not None:
                if client.get_transport_info("sslcontext") is None and not self.url.loopback:
                    raise self._fail(f"refusing to send the SMTP password to {where} over an unencrypted "
                                     "connection: the server did not offer STARTTLS; use ?starttls=require "
                                     "or smtps://", LoginFailed)
                try:
                    await client.login(self.user, self.__password or "")
                except SMTPException as exc:
                    if isinstance(exc, SMTPResponseException) and 400 <= exc.code < 500:
                        raise  # a relay busy now: transient, below
                    detail = _reply(exc.code, exc.message) if isinstance(exc, SMTPResponseException) else exc.message
                    raise self._fail(f"SMTP login to {where} as {self.user!r} failed: {detail}; check "
                                     "CAMPAIGN_SMTP_USER and CAMPAIGN_SMTP_PASSWORD", LoginFailed) from None
        except TransportError:
            client.close()
            raise
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

    async def _transaction(self, client: SmtpClient, env: Envelope, reused: bool,
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
        # Redacted once, by Outcome itself (the same step `_scrub` takes): every message passes here.
        return Outcome("sent", 250, _reply(250, reply)), False

    def _refused(self, client: SmtpClient, pairs: list[tuple[str, int, str]], total: int) -> Outcome:
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

