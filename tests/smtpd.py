"""A real SMTP server on loopback for tests: aiosmtpd in its own thread on a free port, recording and scriptable.

Use the fixtures in a test module with

    from tests.smtpd import smtpd, smtpd_factory  # noqa: F401

`smtpd` is a started plain server; `smtpd_factory(users=..., tls=...)` makes more, with options.
Script what the server answers, per address or for whoever comes next, at MAIL, RCPT or DATA:

    smtpd.script("bob@example.com", [TEMPFAIL, TEMPFAIL])       # 451 twice, then accepted
    smtpd.script("eve@example.com", [NO_SUCH_USER])             # 550 once
    smtpd.script(None, [CLOSING], at="DATA")                     # next message: 421 and the connection closed
    smtpd.script(None, [HANGUP], at="MAIL")                      # next transaction: hang up without a reply
    smtpd.script(None, [STALL])                                  # next RCPT: no answer for `stall_seconds`

Every accepted message is in `smtpd.messages` (a `Received`); `smtpd.connections` counts the connections
the server has accepted, so a test can prove that connections are reused; `smtpd.reads` keeps what each
read from a client brought, so a test can see commands that came together (PIPELINING, RFC 2920).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

ACCEPT = "accept"
HANGUP = "hangup"  # close the connection without a reply
STALL = "stall"  # say nothing for `stall_seconds` (ends early when the client goes away)
TEMPFAIL = "451 4.3.0 try later"
NO_SUCH_USER = "550 5.1.1 no such user"
CLOSING = "421 4.7.0 closing"  # any reply starting with 421 also closes the connection

Stage = Literal["MAIL", "RCPT", "DATA"]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    tls: bool = False
    login: str | None = None
    mail_options: tuple[str, ...] = ()  # e.g. ("SMTPUTF8",)
    received_at: float = 0.0  # time.monotonic() when the server had the whole message (a rate, seen by the relay)


class _Session(SMTP):
    """aiosmtpd's SMTP protocol, reporting each connection to its server."""

    def __init__(self, owner: SmtpServer, handler: Any, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # it is called again after STARTTLS
        super().connection_made(transport)
        if first:
            self._owner._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._owner._closed(self)

    def data_received(self, data: bytes) -> None:
        self._owner._read(data)
        super().data_received(data)


class _Controller(Controller):
    """aiosmtpd's threaded controller, bound to port 0 (it would probe port 0 itself otherwise)."""

    def __init__(self, owner: SmtpServer, handler: Any, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(handler, hostname=HOST, port=0, **kwargs)

    def factory(self) -> _Session:
        return _Session(self._owner, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    """The aiosmtpd handler hooks; they run in the server's thread."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = await self.owner._act(server, "MAIL", [address])
        if reply is None:
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 OK"
        return reply

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = await self.owner._act(server, "RCPT", [address])
        if reply is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 OK"
        return reply

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.owner.pipelining:  # aiosmtpd reads pipelined commands one by one; it just does not say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_exception(self, error: Exception) -> str:
        # Without this hook aiosmtpd logs a traceback (e.g. a TLS handshake the client gave up on).
        self.owner._error(error)
        return f"500 Error: ({error.__class__.__name__}) {error}"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        reply = await self.owner._act(server, "DATA", list(envelope.rcpt_tos))
        if reply is not None:
            return reply
        login = getattr(session.auth_data, "login", None)
        self.owner._record(Received(
            sender=envelope.mail_from, recipients=tuple(envelope.rcpt_tos), data=bytes(envelope.original_content),
            tls=server.transport is not None and server.transport.get_extra_info("sslcontext") is not None,
            login=login.decode() if isinstance(login, bytes) else None,
            mail_options=tuple(o for o in envelope.mail_options if not o.upper().startswith("SIZE=")),
            received_at=time.monotonic()))
        return "250 OK"


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1, a free port, in its own thread.

    users: logins it accepts (AUTH PLAIN/LOGIN, offered without TLS since this is loopback).
    tls: an SSLContext for the server: offered as STARTTLS, or from the first byte with implicit_tls=True.
    smtputf8: offer SMTPUTF8 (RFC 6531); without it an address with a UTF-8 local part cannot be sent here.
    data_size_limit: the SIZE it announces (RFC 1870); a larger declared SIZE is refused at MAIL with 552.
    pipelining: offer PIPELINING (RFC 2920), as most relays do; without it a client waits for each reply.
    """

    def __init__(self, *, users: Mapping[str, str] | None = None, tls: ssl.SSLContext | None = None,
                 implicit_tls: bool = False, stall_seconds: float = 30.0, smtputf8: bool = False,
                 data_size_limit: int = 33554432, pipelining: bool = True) -> None:
        self.host = HOST
        self.pipelining = pipelining
        self._reads: list[bytes] = []
        self.port = 0
        self.users = dict(users or {})
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._errors: list[Exception] = []
        self._scripts: dict[tuple[Stage, str | None], deque[str]] = {}
        self._live: set[_Session] = set()
        self._connections = 0
        kwargs: dict[str, Any] = {"server_hostname": "smtpd.test", "ready_timeout": 10.0,
                                  "enable_SMTPUTF8": smtputf8, "data_size_limit": data_size_limit}
        if self.users:
            # Without TLS aiosmtpd would not offer AUTH; auth_required stays False (True would warn).
            kwargs.update(auth_require_tls=False, authenticator=self._authenticate)
        if tls is not None and implicit_tls:
            kwargs["ssl_context"] = tls
        elif tls is not None:
            kwargs["tls_context"] = tls
        self._controller = _Controller(self, _Handler(self), **kwargs)
        self._started = False

    # --- lifecycle

    def start(self) -> SmtpServer:
        self._controller.start()
        self.port = self._controller.port
        with self._lock:
            self._connections = 0  # forget the controller's own start-up probe
        self._started = True
        return self

    def stop(self) -> None:
        """Drop every open session, then stop the thread; nothing is left open to warn about."""
        if not self._started:
            return
        self._started = False
        loop = self._controller.loop
        asyncio.run_coroutine_threadsafe(self._drop_sessions(), loop).result(timeout=10)
        self._controller.stop()

    async def _drop_sessions(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            with self._lock:
                live = list(self._live)
            if not live or time.monotonic() > deadline:
                return
            for session in live:
                if session.transport is not None:
                    session.transport.abort()
            await asyncio.sleep(0.01)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the tests look at

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def errors(self) -> list[Exception]:
        """Exceptions raised inside the server's sessions (a failed TLS handshake, ...)."""
        with self._lock:
            return list(self._errors)

    @property
    def reads(self) -> list[bytes]:
        """What each read from a client brought, in order: its first KiB, for the first 10,000 reads."""
        with self._lock:
            return list(self._reads)

    @property
    def connections(self) -> int:
        """Connections accepted since start."""
        with self._lock:
            return self._connections

    @property
    def active(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._live)

    def script(self, address: str | None, actions: Iterable[str], at: Stage = "RCPT") -> None:
        """Queue the next answers at a stage: for one address (MAIL: the sender), or None for whoever comes next.

        An action is ACCEPT, HANGUP, STALL, or a reply line such as TEMPFAIL ("451 ..."), NO_SUCH_USER ("550 ...")
        or CLOSING ("421 ...", which also closes the connection). When the queue is empty the server accepts.
        """
        key = (at, address.lower() if address else None)
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(actions)

    # --- called from the server thread

    def _opened(self, session: _Session) -> None:
        with self._lock:
            self._connections += 1
            self._live.add(session)

    def _closed(self, session: _Session) -> None:
        with self._lock:
            self._live.discard(session)

    def _read(self, data: bytes) -> None:
        with self._lock:
            if len(self._reads) < 10_000:
                self._reads.append(data[:1024])

    def _error(self, error: Exception) -> None:
        with self._lock:
            self._errors.append(error)

    def _record(self, message: Received) -> None:
        with self._lock:
            self._messages.append(message)

    def _next_action(self, stage: Stage, addresses: list[str]) -> str | None:
        with self._lock:
            for key in [(stage, a.lower()) for a in addresses] + [(stage, None)]:
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return None

    async def _act(self, server: SMTP, stage: Stage, addresses: list[str]) -> str | None:
        """The scripted reply for this command, or None to accept."""
        action = self._next_action(stage, addresses)
        if action is None or action == ACCEPT:
            return None
        if action == HANGUP:
            assert server.transport is not None
            server.transport.abort()
            await asyncio.Event().wait()  # connection_lost cancels this session's task: never returns
        if action == STALL:
            await asyncio.sleep(self.stall_seconds)  # cancelled as soon as the client hangs up
            return "451 4.4.2 stalled"
        if action.startswith("421"):
            # Close after the reply is written: the reply goes out in this same step of the loop.
            asyncio.get_running_loop().call_soon(server.transport.close)  # type: ignore[union-attr]
        return action

    def _authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if login in self.users and self.users[login] == password:
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def smtpd_factory() -> Iterator[Callable[..., SmtpServer]]:
    """Make started SMTP servers with options (users=, tls=, implicit_tls=, stall_seconds=, smtputf8=,
    data_size_limit=, pipelining=); all stop at teardown."""
    servers: list[SmtpServer] = []

    def make(**options: Any) -> SmtpServer:
        server = SmtpServer(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    """A started plain SMTP server on 127.0.0.1 that accepts everything unless scripted."""
    with SmtpServer() as server:
        yield server
