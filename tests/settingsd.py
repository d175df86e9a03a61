"""A real settings service on loopback for tests and benchmarks: the contract of docs/apply.md over a threaded
`http.server` on a free port, holding device settings, scriptable and recording.

    svc = SettingsService(token="t0k3n").start()        # or the `settingsd` fixture
    svc.hold("d00001", "voice_recordings", "do_not_send")
    svc.script("503", "503")            # the next two requests get 503, the one after is served
    svc.script("hang")                  # the next request gets no answer (for `hang_seconds`), nothing applied
    svc.script("apply_then_hang")       # the next request is applied (and its answer kept), then no answer
    svc.script("401")                   # any 4xx: refused with a reason, nothing applied, the key not kept
    svc.script("503 echo")              # any code, its reason phrase and body echoing the Authorization header

and, served (applied, and the answer kept under its key) but answered as a broken or hostile service would:

    svc.script("status echo")           # each result's status is the Authorization header it got
    svc.script("value EVIL")            # each `applied` result reports this value, not the one set
    svc.script("drip")                  # the whole answer a byte every `drip_seconds`, from its status line
    svc.script("drip body")             # the head at once, then the body a byte every `drip_seconds`
    svc.script("huge")                  # a body of `huge_bytes` spaces, Content-Length saying so
    svc.script("huge chunked")          # the same, chunked, with no length said

It answers as the contract says: a change whose device holds `expect` is applied (`applied`), one whose device
holds something else is a `conflict` (with what it holds), a device it does not have is `unknown_device`. An
Idempotency-Key it has answered before gets the same answer again, and nothing is applied twice. It records
every request (`requests`: key, operation, change ids, what it answered), and counts the applications per
change_id (`applications`) and per device and operation (`device_applications`); `written` gets the bytes a
dripped or huge answer put on the wire once it is over (the client went away, or all was sent).

`python -m tests.settingsd [--port P]` runs one in the foreground (for bench/apply.py); besides the contract's
endpoint it then answers `POST /_control/hold` (a JSON object {device_id: {setting: value}}), `POST
/_control/reset` and `GET /_control/stats`, which are this test server's own, not the contract's.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

HOST = "127.0.0.1"
PATH = "/v1/device-settings:batch"
TOKEN = "s3cret-apply-token"  # a test token


@dataclass(frozen=True)
class Seen:
    """One request the service received."""

    key: str | None
    operation: str | None
    change_ids: tuple[str, ...]
    answered: str  # "200", "200 replay", "503", "401", "hang", …
    authorization_ok: bool
    content_type: str | None


class SettingsService:
    """The service: its devices' settings, its script, what it saw."""

    def __init__(self, token: str = TOKEN, hang_seconds: float = 30.0) -> None:
        self.token = token
        self.hang_seconds = hang_seconds
        self.drip_seconds = 1.0  # between two bytes of a dripped answer
        self.drip_for = 15.0  # seconds a dripped answer goes on at most, then the connection is closed
        self.huge_bytes = 64 * 1024 * 1024
        self.written: list[int] = []  # bytes of each dripped or huge answer, once it is over
        self.devices: dict[str, dict[str, str]] = {}
        self.requests: list[Seen] = []
        self.bodies: list[dict[str, Any]] = []
        self.answers: dict[str, bytes] = {}  # Idempotency-Key → the answer given
        self.applications: Counter[str] = Counter()  # change_id → times applied
        self.device_applications: Counter[tuple[str, str]] = Counter()  # (device_id, operation) → times applied
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------------------------------

    def hold(self, device_id: str, setting: str, value: str) -> None:
        with self._lock:
            self.devices.setdefault(device_id, {})[setting] = value

    def value(self, device_id: str, setting: str) -> str | None:
        with self._lock:
            return self.devices.get(device_id, {}).get(setting)

    def script(self, *actions: str) -> None:
        """What the next requests get, one action each (see the module's docstring); then normal service."""
        with self._lock:
            self._script.extend(actions)

    def reset(self) -> None:
        with self._lock:
            self.devices.clear()
            self.requests.clear()
            self.bodies.clear()
            self.answers.clear()
            self.applications.clear()
            self.device_applications.clear()
            self._script.clear()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.server_address[1]}{PATH}"

    def keys(self) -> list[str | None]:
        return [r.key for r in self.requests]

    def start(self, port: int = 0) -> SettingsService:
        service = self

        class Handler(_Handler):
            svc = service

        self._server = ThreadingHTTPServer((HOST, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="settingsd", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # wake any hanging answer
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the contract --------------------------------------------------------------------------------

    def _next(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else "serve"

    def answer(self, key: str, body: dict[str, Any], status: str | None = None,
               value: str | None = None) -> tuple[bytes, bool]:
        """The answer for a batch (the kept one for a key seen before) and whether it was a replay; `status`: each
        result's status says this instead; `value`: each `applied` result reports this value."""
        with self._lock:
            if key in self.answers:
                return self.answers[key], True
            results = []
            operation = str(body.get("operation"))
            for change in body.get("changes", []):
                device, setting = change["device_id"], change["setting"]
                settings = self.devices.get(device)
                if settings is None:
                    results.append({"change_id": change["change_id"], "status": "unknown_device", "value": None})
                    continue
                now = settings.get(setting)
                if now != change["expect"]:
                    results.append({"change_id": change["change_id"], "status": "conflict", "value": now})
                    continue
                settings[setting] = change["value"]
                self.applications[change["change_id"]] += 1
                self.device_applications[device, operation] += 1
                results.append({"change_id": change["change_id"], "status": "applied",
                                "value": change["value"] if value is None else value})
            if status is not None:
                for r in results:
                    r["status"] = status
            out = json.dumps({"results": results}).encode()
            self.answers[key] = out
            return out, False


class _Handler(BaseHTTPRequestHandler):
    svc: SettingsService
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's delayed ACK
    # (~40 ms a request on Linux), which no real service would add.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (it timed out)
            self.close_connection = True

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:  # the client went away
            self.close_connection = True
            return False

    def _drip(self, body: bytes, head_too: bool) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode())
        svc, written = self.svc, 0
        if not head_too:
            if not self._write(head):
                svc.written.append(written)
                return
            written, head = len(head), b""
        data = head + body
        until = time.monotonic() + svc.drip_for
        for i in range(len(data)):
            if not self._write(data[i:i + 1]):
                break
            written += 1
            if svc._release.wait(svc.drip_seconds) or time.monotonic() > until:
                break
        self.close_connection = True
        svc.written.append(written)

    def _huge(self, chunked: bool) -> None:
        svc = self.svc
        size = svc.huge_bytes
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        written = 0
        if self._write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode()):
            piece = b" " * 65536
            while written < size:
                part = piece[:size - written]
                if not self._write(f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part):
                    break
                written += len(part)
            if written == size and chunked:
                self._write(b"0\r\n\r\n")
        self.close_connection = True
        svc.written.append(written)

    def _hang(self) -> None:
        self.svc._release.wait(self.svc.hang_seconds)
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/_control/stats":
            svc = self.svc
            with svc._lock:
                stats = {"requests": len(svc.requests), "applications": sum(svc.applications.values()),
                         "changes_applied_twice": sum(1 for n in svc.applications.values() if n > 1)}
            self._reply(200, json.dumps(stats).encode())
            return
        self._reply(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        svc = self.svc
        if self.path == "/_control/hold":
            for device, settings in json.loads(raw).items():
                for setting, value in settings.items():
                    svc.hold(device, setting, value)
            self._reply(200, b"{}")
            return
        if self.path == "/_control/reset":
            svc.reset()
            self._reply(200, b"{}")
            return
        if self.path != PATH:
            self._reply(404, b'{"error": "no such endpoint"}')
            return
        key = self.headers.get("Idempotency-Key")
        auth_ok = self.headers.get("Authorization") == f"Bearer {svc.token}"
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        change_ids = tuple(c.get("change_id") for c in body.get("changes", []) if isinstance(c, dict))

        def seen(answered: str) -> None:
            with svc._lock:
                svc.requests.append(Seen(key, body.get("operation"), change_ids, answered, auth_ok,
                                         self.headers.get("Content-Type")))
                svc.bodies.append(body)

        action = svc._next()
        name, _, arg = action.partition(" ")
        if action == "hang":
            seen("hang")
            self._hang()
            return
        if name.isdigit():
            code = int(name)
            seen(action)
            if arg == "echo":  # a careless service: what it got, in its reason phrase and its body
                got = self.headers.get("Authorization") or ""
                body = json.dumps({"error": f"scripted {code}", "got": got}).encode()
                try:
                    self.send_response(code, f"Scripted {code} for {got}")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True
                return
            self._reply(code, json.dumps({"error": f"scripted {code}"}).encode())
            return
        if not auth_ok:
            seen("401")
            self._reply(401, b'{"error": "the bearer token is not valid for this service"}')
            return
        if not key:
            seen("400")
            self._reply(400, b'{"error": "Idempotency-Key is required"}')
            return
        if name == "status" and arg == "echo":
            out, replay = svc.answer(key, body, status=self.headers.get("Authorization") or "")
        elif name == "value":
            out, replay = svc.answer(key, body, value=arg)
        else:
            out, replay = svc.answer(key, body)
        if action == "apply_then_hang":
            seen("apply_then_hang")
            self._hang()
            return
        if name in ("drip", "huge"):
            seen(action)
            if name == "drip":
                self._drip(out, head_too=arg != "body")
            else:
                self._huge(chunked=arg == "chunked")
            return
        seen(("200 replay" if replay else "200") + (f" {action}" if name in ("status", "value") else ""))
        self._reply(200, out)


@pytest.fixture
def settingsd() -> Iterator[SettingsService]:
    """A started settings service on a free loopback port (token `TOKEN`), stopped afterwards."""
    svc = SettingsService().start()
    yield svc
    svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="the tests' settings service, in the foreground")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=TOKEN)
    args = parser.parse_args()
    svc = SettingsService(token=args.token).start(args.port)
    print(svc.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        svc.stop()


if __name__ == "__main__":
    main()
