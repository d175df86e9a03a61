"""The console on loopback for tests: `campaign serve`'s app on uvicorn in a thread on a free port, an issuer of
our own (a key pair made here, its JWKS in a file or served by a tiny http.server), and tokens signed with it.

    issuer = Issuer()                          # RSA key pair, kid "k1"
    token = issuer.token("pat@example.com", groups=["privacy"])
    server = Console(config, engine).start()   # server.url; server.stop()
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import Engine

from campaign.config import Config
from campaign.console.app import create_app

HOST = "127.0.0.1"
ISSUER = "https://sso.test.example"
AUDIENCE = "campaign"


class Issuer:
    """An identity provider of the test's own: signs tokens, publishes its public key as a JWKS."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()), encoding="utf-8")
        return path

    def claims(self, email: str, groups: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"sub-{email}", "email": email, "groups": groups or [],
                "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, email: str, groups: list[str] | None = None, *, alg: str = "RS256", kid: str | None = None,
              **overrides: Any) -> str:
        return jwt.encode(self.claims(email, groups, **overrides), self.key, algorithm=alg,
                          headers={"kid": kid or self.kid})


def unsigned(claims: dict[str, Any]) -> str:
    """A token with `alg: none` (no signature at all)."""
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})


class JwksServer:
    """The issuer's JWKS on a loopback URL, counting the fetches; `issuers` may be swapped (a key rotation)."""

    def __init__(self, *issuers: Issuer) -> None:
        self.issuers = list(issuers)
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": [k for i in outer.issuers for k in i.jwks()["keys"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Console:
    """`campaign serve` in a thread on a free loopback port."""

    def __init__(self, config: Config, engine: Engine) -> None:
        app = create_app(config, engine)
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=0, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def start(self) -> Console:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def serving(config: Config, engine: Engine) -> Iterator[Console]:
    console = Console(config, engine).start()
    try:
        yield console
    finally:
        console.stop()


def expired_claims(issuer: Issuer, email: str) -> dict[str, Any]:
    past = int((dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).timestamp())
    return issuer.claims(email, exp=past, nbf=past - 600, iat=past - 600)
