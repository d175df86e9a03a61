"""A real IMAP server on loopback for tests: Debian's Dovecot, started with a configuration of its own in a
temporary directory (a passwd-file user, Maildir storage, plain IMAP and IMAPS with a self-signed certificate
made here), on free ports (tests/ports.py), and stopped after the test.

Use `imapd` in a test module with

    from tests.imapd import imapd  # noqa: F401

Without Dovecot installed (`apt-get install dovecot-imapd`; .ci/run does it) the tests that need it skip, and
fail under CI=true.

`FakeImap` is not Dovecot: a loopback server that plays a script (says nothing, drips its greeting a byte at a
time, answers with what the test wants), for what a real server would never do.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
IN_CI = os.environ.get("CI", "").lower() == "true"
HOST = "127.0.0.1"
USER, PASSWORD = "bounces", "imap-test-secret"


class ImapServer:
    """One Dovecot: `imap_port` (plain, loopback only), `imaps_port` (TLS, certificate in `cert`)."""

    def __init__(self, root: Path, capability: str | None = None) -> None:
        self.root, self.capability = root, capability
        self.imap_port, self.imaps_port = free_port(), free_port()
        self.cert = root / "cert.pem"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, folder: str = "INBOX", tls: bool = False) -> str:
        scheme, port = ("imaps", self.imaps_port) if tls else ("imap", self.imap_port)
        return f"{scheme}://{USER}@{HOST}:{port}/{folder}"

    def start(self) -> ImapServer:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(root / "key.pem"), "-out", str(self.cert)],
                       check=True, capture_output=True)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
        me = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            # Dovecot will not give mail to root: the mailbox belongs to `nobody`; its own processes run as the
            # users the Debian package made.
            uid, gid = pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid
            os.chown(root / "mail", uid, gid)
            users = ""
        else:
            uid, gid = os.getuid(), os.getgid()
            users = f"default_login_user = {me}\ndefault_internal_user = {me}\n"
        (root / "dovecot.conf").write_text(f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{users}protocols = imap
listen = {HOST}
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {min(uid, 100)}
{f"imap_capability = {self.capability}" if self.capability else ""}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
""", encoding="utf-8")
        self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                out = self._proc.stdout.read().decode(errors="replace") if self._proc.stdout else ""
                raise RuntimeError(f"dovecot exited: {out}{self.log()}")
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                with imaplib.IMAP4(HOST, self.imap_port, timeout=2) as probe:
                    probe.login(USER, PASSWORD)
                    probe.logout()
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not answer on {HOST}:{self.imap_port}: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dovecot.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    # a client for the tests' own looks and appends

    def client(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(HOST, self.imap_port, timeout=10)
        conn.login(USER, PASSWORD)
        return conn

    def append(self, messages: list[bytes], folder: str = "INBOX") -> None:
        conn = self.client()
        try:
            for raw in messages:
                typ, data = conn.append(folder, None, None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
                assert typ == "OK", data
        finally:
            conn.logout()

    def count(self, folder: str) -> int:
        """Messages in `folder` (0 when it does not exist)."""
        conn = self.client()
        try:
            typ, data = conn.select(f'"{folder}"', readonly=True)
            return int(data[0] or 0) if typ == "OK" else 0
        finally:
            conn.logout()

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
def imapd(request: pytest.FixtureRequest) -> Iterator[ImapServer]:
    """A started Dovecot on loopback with the user `bounces` and an empty INBOX. Indirect parametrization may
    give the capabilities it tells once logged in (e.g. without MOVE)."""
    if not Path(DOVECOT).exists():
        if IN_CI:
            pytest.fail("CI=true but Dovecot is not installed (.ci/run installs dovecot-imapd)")
        pytest.skip("Dovecot is not installed (apt-get install dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="campaign-imapd-"))
    os.chmod(root, 0o755)  # the mailbox's owner (`nobody` under root) must reach its folder
    server = ImapServer(root, getattr(request, "param", None))
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- a server that plays a script ---------------------------------------------------------------------------

Script = Callable[[socket.socket, threading.Event], None]


class FakeImap:
    """A loopback TCP server that runs `script(connection, stopped)` for each connection, in a thread of its
    own; `stop()` sets `stopped` and closes everything."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.stopped = threading.Event()
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def url(self, folder: str = "INBOX", user: str = USER) -> str:
        return f"imap://{user}@{HOST}:{self.port}/{folder}"

    def _accept(self) -> None:
        self.listener.settimeout(0.1)  # a closed listener does not wake a waiting accept(): look again often
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.script(conn, self.stopped)

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self.threads:
            thread.join(10)


def silent(conn: socket.socket, stopped: threading.Event) -> None:
    """Takes the connection and says nothing, ever."""
    stopped.wait(60)


def dripping(conn: socket.socket, stopped: threading.Event) -> None:
    """Sends a greeting a byte every 0.2 s, never ending it (for at most 40 s)."""
    conn.sendall(b"* OK ")
    for _ in range(200):
        if stopped.wait(0.2):
            return
        conn.sendall(b"x")


def answering(answers: dict[str, str]) -> Script:
    """A server that greets, then answers each command by its name: `answers[NAME]` (with {tag}), else OK."""
    def script(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(b"* OK fake IMAP ready\r\n")
        f = conn.makefile("rb")
        while not stopped.is_set():
            line = f.readline()
            if not line:
                return
            tag, _, rest = line.decode(errors="replace").partition(" ")
            name = rest.split(" ", 1)[0].strip().upper()
            if name == "CAPABILITY":
                reply = answers.get(name, "* CAPABILITY IMAP4rev1 MOVE\r\n{tag} OK done")
            elif name == "LOGOUT":
                reply = "* BYE\r\n{tag} OK bye"
            else:
                reply = answers.get(name, "{tag} OK done")
            conn.sendall((reply.format(tag=tag) + "\r\n").encode())
            if name == "LOGOUT":
                return
    return script


@pytest.fixture
def fake_imap() -> Iterator[Callable[[Script], FakeImap]]:
    """`fake_imap(script)` starts a `FakeImap`; each is stopped after the test."""
    servers: list[FakeImap] = []

    def start(script: Script) -> FakeImap:
        servers.append(FakeImap(script))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()
