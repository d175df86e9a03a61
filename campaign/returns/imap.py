"""Returned mail in an IMAP folder (`campaign bounces fetch imaps://USER@HOST/FOLDER`): the URL, the password,
and one session — log in, select the folder, fetch its messages in bounded batches, move those taken in.

The URL follows the rules every URL of ours follows (`campaign.urls`): plain imap:// only to a loopback host,
and no password in it (it comes from CAMPAIGN_IMAP_PASSWORD). Every read of the server's answers is bounded in
time (`ImapTimes`) and bytes: a server that says nothing, drips or sends without end cannot hold the fetch. What
the server says goes through `campaign.redaction` before it is shown. Messages come out as
`campaign.returns.mailboxes` finds them in a Maildir; `campaign.returns.bounces` takes them in.
"""

from __future__ import annotations

import contextlib
import imaplib
import io
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from campaign import redaction
from campaign.errors import CampaignError, ConfigError, UsageError
from campaign.returns.mailboxes import MAX_MESSAGE_BYTES, TOO_LARGE, Found, Message, MiB, Unread, why_too_large
from campaign.urls import is_loopback

PASSWORD_ENV = "CAMPAIGN_IMAP_PASSWORD"  # noqa: S105  (the variable's name, not a password)
PROCESSED = "Processed"  # where messages taken in are moved, unless told otherwise
IMAP_FETCH = 100  # messages per IMAP FETCH, at most
IMAP_FETCH_BYTES = 16 * MiB  # and their bytes as the server announces them (RFC822.SIZE), at most
IMAP_MAX_LINE = 1_000_000  # bytes of one line of the server's (imaplib's own limit)


@dataclass(frozen=True)
class ImapTimes:
    """How long the IMAP server is waited for, in seconds; the defaults are production's (tests pass shorter)."""

    wait: float = 30.0  # connecting, and each wait for the server's next bytes
    exchange: float = 300.0  # one command and the whole of its answer (a server dripping bytes ends here)


TIMES = ImapTimes()


@dataclass(frozen=True)
class ImapURL:
    """`imaps://USER@HOST[:PORT]/FOLDER` (imap:// only to a loopback host); `str()` never holds a secret."""

    scheme: str
    user: str
    host: str
    port: int
    folder: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.user}@{host}:{self.port}/{self.folder}"


IMAP_FORM = "imaps://USER@HOST[:PORT]/FOLDER (imap:// only to a loopback host)"


def plain_folder(folder: str) -> bool:
    return folder.isascii() and folder.isprintable() and not any(ch in folder for ch in '"\\') and \
        0 < len(folder) <= 200


def parse_imap_url(url: str) -> ImapURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"not an IMAP URL ({exc}): expected {IMAP_FORM}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("imap", "imaps"):
        raise ConfigError(f"not an IMAP URL: expected {IMAP_FORM}")
    if parts.password is not None:
        raise ConfigError(f"the IMAP URL holds a password: take it out and set {PASSWORD_ENV} instead")
    if not parts.username or not parts.hostname:
        raise ConfigError(f"the IMAP URL needs a user and a host: {IMAP_FORM}")
    if parts.query or parts.fragment:
        raise ConfigError(f"the IMAP URL takes no ?options or #fragment: {IMAP_FORM}")
    user = unquote(parts.username)
    if not user.isascii() or not user.isprintable() or len(user) > 255:
        # CR/LF would end the LOGIN command and start another one of the URL's choosing
        raise ConfigError(f"the IMAP user name {user[:80]!r} holds a control character, a line break or a "
                          "character outside ASCII: give a plain ASCII user name (a '@' is written %40)")
    host = parts.hostname
    if scheme == "imap" and not is_loopback(host):
        raise ConfigError(f"imap:// would send the password unencrypted to {host}: use imaps:// "
                          "(plain imap:// is only for a loopback host)")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    if not plain_folder(folder):
        raise ConfigError(f"IMAP folder {folder[:80]!r}: use a plain ASCII folder name")
    return ImapURL(scheme, user, host, port or (993 if scheme == "imaps" else 143), folder)


def _quote(folder: str) -> str:
    return f'"{folder}"'


class _Bounded(imaplib.IMAP4):
    """imaplib's reads of the server's answers, bounded: each wait for bytes by `times.wait`, each exchange (a
    command and the whole of its answer, armed by `arm`) by `times.exchange` seconds, and by bytes — a server
    that says nothing, drips its answer a byte at a time or sends without end cannot hold the fetch."""

    times = TIMES
    _deadline = 0.0
    _left = 0

    def arm(self, seconds: float | None = None) -> None:
        """A new exchange begins: its time and its bytes run from now."""
        self._deadline = time.monotonic() + (self.times.exchange if seconds is None else seconds)
        self._left = IMAP_FETCH_BYTES + MAX_MESSAGE_BYTES + IMAP_MAX_LINE

    def _wait(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no whole answer within {self.times.exchange:g} s")
        self.sock.settimeout(min(self.times.wait, left))

    def _spend(self, n: int) -> None:
        self._left -= n
        if self._left < 0:
            raise self.error("the server sent more than a fetch of returned mail takes at once")

    def read(self, size: int) -> bytes:
        """A literal of `size` bytes (a message), read a socket's read at a time."""
        if size > self._left:
            raise self.error(f"the server sends {size} bytes at once, more than a fetch of returned mail takes")
        f = cast(io.BufferedReader, self.file)
        out = bytearray()
        while len(out) < size:
            self._wait()
            piece = f.read1(min(size - len(out), 1 << 16))
            if not piece:
                break
            out += piece
        self._spend(len(out))
        return bytes(out)

    def readline(self) -> bytes:
        """One line of the server's, read a socket's read at a time."""
        f = cast(io.BufferedReader, self.file)
        out = bytearray()
        while True:
            self._wait()
            buffered = f.peek(1)  # at most one read from the socket
            if not buffered:
                break
            end = buffered.find(b"\n")
            piece = f.read(len(buffered) if end < 0 else end + 1)  # from the buffer
            out += piece
            self._spend(len(piece))
            if end >= 0:
                break
            if len(out) > IMAP_MAX_LINE:
                raise self.error(f"the server sent a line of more than {IMAP_MAX_LINE} bytes")
        return bytes(out)


class _Plain(_Bounded):
    def __init__(self, host: str, port: int, times: ImapTimes) -> None:
        self.times = times
        self.arm()  # the greeting
        super().__init__(host, port, timeout=times.wait)


class _Tls(_Bounded, imaplib.IMAP4_SSL):
    def __init__(self, host: str, port: int, context: ssl.SSLContext, times: ImapTimes) -> None:
        self.times = times
        self.arm()  # the TLS handshake (bounded by `times.wait` as a whole) and the greeting
        imaplib.IMAP4_SSL.__init__(self, host, port, ssl_context=context, timeout=times.wait)


class Session:
    """One IMAP session: log in, select the folder, fetch its messages, move those taken in."""

    def __init__(self, url: ImapURL, password: str, move_to: str, readonly: bool, times: ImapTimes = TIMES) -> None:
        self.url, self.move_to = url, move_to
        try:
            if url.scheme == "imaps":
                self.conn: _Bounded = _Tls(url.host, url.port, ssl.create_default_context(), times)
            else:
                self.conn = _Plain(url.host, url.port, times)
        except ssl.SSLError as exc:
            raise CampaignError(f"IMAP server {url.host}:{url.port}: TLS failed ({said(exc.reason or exc)}); a "
                                "private certificate authority goes in SSL_CERT_FILE") from None
        except TimeoutError:
            raise
        except (OSError, imaplib.IMAP4.error) as exc:
            raise CampaignError(f"cannot reach the IMAP server {url.host}:{url.port}: "
                                f"{said(getattr(exc, 'strerror', None) or exc)}") from None
        try:
            self._open(password, readonly)
        except BaseException as exc:
            self.close(polite=not isinstance(exc, TimeoutError))
            raise

    def _open(self, password: str, readonly: bool) -> None:
        url = self.url
        try:
            self._do(self.conn.login, url.user, password)
        except imaplib.IMAP4.error as exc:
            raise CampaignError(f"the IMAP server {url.host}:{url.port} refused the login of {url.user!r}: "
                                f"{said(exc)} (check the user and {PASSWORD_ENV})") from None
        # What the server can do once logged in (Dovecot, for one, tells MOVE only then).
        typ, data = self._do(self.conn.capability)
        caps = set(said(data[0] or b"", None).upper().split()) if typ == "OK" else set()
        self.moves, self.uidplus = "MOVE" in caps, "UIDPLUS" in caps
        typ, data = self._do(self.conn.select, _quote(url.folder), readonly)
        if typ != "OK":
            raise UsageError(f"IMAP folder {url.folder!r} on {url.host}: {said(data)}")
        if not readonly and self.move_to != url.folder:
            self._do(self.conn.create, _quote(self.move_to))  # refused when it exists already: that is fine

    def _do(self, command: Callable[..., Any], *args: Any) -> Any:
        """One exchange with the server, bounded in time and bytes."""
        self.conn.arm()
        return command(*args)

    def uids(self) -> list[str]:
        typ, data = self._do(self.conn.uid, "SEARCH", "UNDELETED")  # what another client marked deleted is on
        if typ != "OK":                                               # its way out
            raise CampaignError(f"IMAP SEARCH failed: {said(data)}")
        return [u.decode() for u in (data[0] or b"").split() if u.isdigit()]

    def _origin(self, uid: str) -> str:
        return f"{self.url};UID={uid}"

    def messages(self) -> Iterator[Found]:
        """The folder's messages, fetched IMAP_FETCH at a time and at most IMAP_FETCH_BYTES at once (as the
        server announces their sizes); one larger than MAX_MESSAGE_BYTES is listed and left in the folder."""
        uids = self.uids()
        for i in range(0, len(uids), IMAP_FETCH):
            group = uids[i:i + IMAP_FETCH]
            sizes = self._sizes(group)
            batch: list[str] = []
            size = 0
            for uid in group:
                if uid not in sizes:
                    continue  # gone meanwhile
                if sizes[uid] > MAX_MESSAGE_BYTES:
                    yield Unread(self._origin(uid), TOO_LARGE, why_too_large(sizes[uid]) + ", left in the folder")
                    continue
                if batch and size + sizes[uid] > IMAP_FETCH_BYTES:
                    yield from self._fetch(batch)
                    batch, size = [], 0
                batch.append(uid)
                size += sizes[uid]
            if batch:
                yield from self._fetch(batch)

    def _sizes(self, uids: list[str]) -> dict[str, int]:
        typ, data = self._do(self.conn.uid, "FETCH", ",".join(uids), "(UID RFC822.SIZE)")
        if typ != "OK":
            raise CampaignError(f"IMAP FETCH failed: {said(data)}")
        sizes = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            uid, size = re.search(rb"UID (\d+)", line or b""), re.search(rb"RFC822\.SIZE (\d+)", line or b"")
            if uid is not None and size is not None:
                sizes[uid.group(1).decode()] = int(size.group(1))
        return sizes

    def _fetch(self, uids: list[str]) -> Iterator[Found]:
        # BODY.PEEK: not marked read; <0.N>: the server sends no more than one byte over the cap
        typ, data = self._do(self.conn.uid, "FETCH", ",".join(uids), f"(UID BODY.PEEK[]<0.{MAX_MESSAGE_BYTES + 1}>)")
        if typ != "OK":
            raise CampaignError(f"IMAP FETCH failed: {said(data)}")
        for item in data:
            if not isinstance(item, tuple):
                continue
            m = re.search(rb"UID (\d+)", item[0])
            if m is None:
                continue
            uid = m.group(1).decode()
            if len(item[1]) > MAX_MESSAGE_BYTES:
                yield Unread(self._origin(uid), TOO_LARGE, why_too_large(f"over {MAX_MESSAGE_BYTES}")
                             + ", left in the folder")
                continue
            yield Message(self._origin(uid), item[1], uid)

    def move(self, chunk: list[Message]) -> int:
        """Move the messages of a committed chunk to the processed folder."""
        if self.move_to == self.url.folder:
            return 0
        uids = ",".join(m.uid for m in chunk if m.uid is not None)
        if not uids:
            return 0
        if self.moves:
            typ, data = self._do(self.conn.uid, "MOVE", uids, _quote(self.move_to))
        else:
            typ, data = self._do(self.conn.uid, "COPY", uids, _quote(self.move_to))
            if typ == "OK":
                self._do(self.conn.uid, "STORE", uids, "+FLAGS.SILENT", r"(\Deleted)")
                if self.uidplus:  # only ours: a plain EXPUNGE would also remove what others marked deleted
                    self._do(self.conn.uid, "EXPUNGE", uids)
                else:
                    self._do(self.conn.expunge)
        if typ != "OK":
            raise CampaignError(f"IMAP: could not move messages to {self.move_to!r}: {said(data)} (they were "
                                "taken in; the next fetch finds them again and changes nothing for them)")
        return len(chunk)

    def close(self, polite: bool = True) -> None:
        """LOGOUT (not CLOSE: CLOSE would expunge whatever another client marked deleted), briefly; a server
        that did not answer in time is not waited for again: the connection is just shut."""
        with contextlib.suppress(Exception):
            if polite:
                self.conn.arm(min(self.conn.times.wait, 5.0))
                self.conn.logout()
            else:
                self.conn.shutdown()


def said(data: Any, limit: int | None = 300) -> str:
    """What the IMAP server said (a response's data, an error), for a message: secrets masked, one line."""
    if isinstance(data, BaseException):
        data = list(data.args) or str(data)
    parts = data if isinstance(data, (list, tuple)) else [data]
    text = " ".join(p.decode(errors="replace") if isinstance(p, bytes) else str(p) for p in parts if p)
    return redaction.redact(text, limit) or "refused"


def password() -> str:
    """The IMAP password, from CAMPAIGN_IMAP_PASSWORD (never from the URL), held for redaction as it is read;
    ConfigError when it is missing or could not go into a LOGIN command."""
    value = os.environ.get(PASSWORD_ENV)
    if not value:
        raise ConfigError(f"{PASSWORD_ENV} is not set: the IMAP password is taken from there (never from the URL)")
    redaction.hold(value)
    if not value.isascii() or not value.isprintable():
        raise ConfigError(f"{PASSWORD_ENV} holds a control character, a line break or a character outside ASCII: "
                          "IMAP LOGIN cannot send it")
    return value


@contextlib.contextmanager
def session(url: ImapURL, password: str, move_to: str, readonly: bool, times: ImapTimes = TIMES
            ) -> Iterator[Session]:
    """An IMAP session for the time of the `with`, closed after it (politely, unless the server stopped
    answering); a timeout or a lost connection, there or in the `with`, is a CampaignError saying so."""
    where = f"IMAP server {url.host}:{url.port}"
    opened, polite = None, True
    try:
        opened = Session(url, password, move_to, readonly, times)
        yield opened
    except TimeoutError:
        polite = False
        raise CampaignError(f"the {where} did not answer in time (nothing for {times.wait:g} s, or no whole "
                            f"answer within {times.exchange:g} s); what was taken in so far stays, and fetching "
                            "again changes nothing for it") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise CampaignError(f"{where}: {said(exc)} (what was taken in so far stays; fetching again changes "
                            "nothing for it)") from None
    finally:
        if opened is not None:
            opened.close(polite)
