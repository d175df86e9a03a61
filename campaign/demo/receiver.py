"""The demo's webhook receiver: an HTTP server on 127.0.0.1 standing in for the team's incident tool or chat,
which verifies each request's Standard Webhooks signature (the `standardwebhooks` package, as a receiver would)
and keeps the events it accepted. `campaign demo` points a `[[webhooks]]` endpoint at it; nothing leaves the
machine."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MAX_BODY = 1 << 20  # the demo's events are a few hundred bytes


class Receiver:
    """Accepts signed events at http://127.0.0.1:PORT/ (204); refuses a bad signature (401)."""

    def __init__(self, secret: str) -> None:
        self.hook = Webhook(secret)
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(size, MAX_BODY))
                try:
                    payload = receiver.hook.verify(body, {k.lower(): v for k, v in self.headers.items()})
                except (WebhookVerificationError, json.JSONDecodeError):
                    with receiver._lock:
                        receiver.refused += 1
                    self.send_response(401)
                else:
                    with receiver._lock:
                        receiver.events.append(payload)
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Says nothing: the demo's output is the commands'."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-webhooks", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def types(self) -> list[str]:
        with self._lock:
            return [str(e.get("type")) for e in self.events]
