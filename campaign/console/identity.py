"""Who is asking, proven on every request: a JWT that an identity-aware proxy (oauth2-proxy, Pomerium, Google IAP,
Cloudflare Access) signed and forwarded, verified against the issuer's JWKS — or, for trying the console out on
one's own machine, a demo persona picked from a fixed list (loopback only).

The token's signature is checked against a key of the JWKS with an algorithm from a pinned list of asymmetric
ones (never `none`, never HS*: a public key must not become an HMAC secret), then `iss`, `aud`, `exp` and `nbf`
(30 seconds of leeway for clocks apart). A failure says why in the log, never to the client."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from campaign import urls
from campaign.config import ConsoleConfig
from campaign.redaction import redact
from campaign.validation import check_actor

log = logging.getLogger("campaign.console")

LEEWAY_SECONDS = 30
JWKS_TTL_SECONDS = 300.0  # a fetched key set is used this long before it is fetched again
JWKS_MIN_REFRESH_SECONDS = 30.0  # an unknown kid refetches at most this often (a flood of bad tokens fetches once)
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MAX_BYTES = 512 * 1024
MAX_TOKEN_BYTES = 16 * 1024


class Unauthenticated(Exception):
    """No valid identity: the reason goes to the log, the client gets a plain 401."""


@dataclass(frozen=True)
class Identity:
    """A person proven by a token (or a demo persona): the email is the actor of what they do."""

    email: str
    groups: frozenset[str] = frozenset()
    proof: str = "jwt"  # "jwt" | "demo"
    issuer: str | None = None
    subject: str | None = None
    token_id: str | None = None
    persona: str | None = None  # demo mode: which persona

    def evidence(self) -> dict[str, str]:
        """What an approval records beside the actor of how the identity was proven: the token's issuer, subject
        and id (`approval.Approver`'s evidence; its `proof` says "jwt")."""
        out: dict[str, str] = {}
        for key, value in (("issuer", self.issuer), ("sub", self.subject), ("jti", self.token_id),
                           ("persona", self.persona)):
            if value:
                out[key] = value
        return out


# -- the JWKS ---------------------------------------------------------------------------------------------------

Fetch = Callable[[str], bytes]


def fetch_url(url: str) -> bytes:
    """The JWKS document at `url`: one deadline, a size cap, TLS verified (plain HTTP only to a loopback host)."""
    with httpx.Client(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as client, \
            client.stream("GET", url, headers={"Accept": "application/json"}) as response:
        if response.status_code != 200:
            raise Unauthenticated(f"JWKS {url}: HTTP {response.status_code}")
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > JWKS_MAX_BYTES:
                raise Unauthenticated(f"JWKS {url}: larger than {JWKS_MAX_BYTES} bytes")
        return body


def jwks_source_problem(source: str) -> str | None:
    """Why `source` cannot be a JWKS (an http:// URL to another host, a file that is not there), or None."""
    if source.startswith(("https://", "http://")):
        try:
            parts = urls.split(source)
        except ValueError as exc:
            return str(exc)
        if parts.scheme == "http" and not urls.is_loopback(parts.hostname or ""):
            return "an http:// JWKS is accepted only from a loopback host: use https://"
        return None
    if not Path(source).is_file():
        return f"no file {source} (a JWKS is an https:// URL or a file path)"
    return None


@dataclass
class Jwks:
    """The issuer's keys by kid: from a file (read again when it changes) or a URL (cached `ttl` seconds, fetched
    again at once — at most every JWKS_MIN_REFRESH_SECONDS — when a token names a kid it does not hold)."""

    source: str
    fetch: Fetch = fetch_url
    ttl: float = JWKS_TTL_SECONDS
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str | None, PyJWK] = field(default_factory=dict)
    _fetched_at: float | None = None
    _stamp: tuple[float, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def remote(self) -> bool:
        return self.source.startswith(("https://", "http://"))

    def key(self, kid: str | None) -> PyJWK:
        with self._lock:
            if self._stale():
                self._load()
            found = self._find(kid)
            if found is None and self.remote and self._fetched_at is not None \
                    and self.clock() - self._fetched_at >= JWKS_MIN_REFRESH_SECONDS:
                self._load()  # the issuer may have rotated its keys since we fetched them
                found = self._find(kid)
            if found is None:
                raise Unauthenticated(f"no key {kid!r} in the JWKS")
            return found

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _stale(self) -> bool:
        if self.remote:
            return self._fetched_at is None or self.clock() - self._fetched_at >= self.ttl
        try:
            st = Path(self.source).stat()
        except OSError:
            return True
        return self._stamp != (st.st_mtime, st.st_size)

    def _load(self) -> None:
        try:
            if self.remote:
                raw = self.fetch(self.source)
            else:
                path = Path(self.source)
                st = path.stat()
                raw = path.read_bytes()[:JWKS_MAX_BYTES + 1]
                self._stamp = (st.st_mtime, st.st_size)
            self._keys = parse_jwks(raw)
        except (OSError, httpx.HTTPError, ValueError) as exc:
            self._fetched_at = self.clock()  # do not hammer an issuer that is away: try again after the pause
            raise Unauthenticated(f"JWKS {self.source}: {redact(str(exc)) or type(exc).__name__}") from None
        self._fetched_at = self.clock()


def parse_jwks(raw: bytes) -> dict[str | None, PyJWK]:
    """The asymmetric keys of a JWKS document by kid; a symmetric (`oct`) key is left out, so that no token's
    HMAC can ever be checked against one."""
    if len(raw) > JWKS_MAX_BYTES:
        raise ValueError(f"larger than {JWKS_MAX_BYTES} bytes")
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS (an object with a list of keys)")
    keys: dict[str | None, PyJWK] = {}
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use") == "enc":
            continue
        try:
            keys[entry.get("kid")] = PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key of a kind we cannot use is not ours to fail on
    if not keys:
        raise ValueError("no usable signing key")
    return keys


# -- the token --------------------------------------------------------------------------------------------------

def token_from(headers: Mapping[str, str], header: str) -> str:
    """The token the proxy forwarded in `header` (Authorization as `Bearer TOKEN`)."""
    value = headers.get(header.lower(), "").strip()
    if header == "Authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("no Bearer token in Authorization")
        value = value.strip()
    if not value:
        raise Unauthenticated(f"no token in {header}")
    if len(value) > MAX_TOKEN_BYTES:
        raise Unauthenticated(f"a token of {len(value)} bytes")
    return value


@dataclass
class Verifier:
    """Checks a token against [console]: signature (JWKS, pinned algorithms), iss, aud, exp, nbf; then the email
    and groups from their claims."""

    config: ConsoleConfig
    jwks: Jwks

    def verify(self, token: str) -> Identity:
        c = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in c.algorithms:
            raise Unauthenticated(f"algorithm {alg!r} refused (accepted: {', '.join(c.algorithms)})")
        kid = header.get("kid")
        key = self.jwks.key(kid if isinstance(kid, str) else None)
        if key.algorithm_name not in c.algorithms:
            raise Unauthenticated(f"the JWKS key {kid!r} is for {key.algorithm_name}, not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=c.audience, issuer=c.issuer, leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token refused: {type(exc).__name__}: {exc}") from None
        return Identity(email=_email(claims, c.email_claim), groups=_groups(claims, c.groups_claim), proof="jwt",
                        issuer=str(claims.get("iss")), subject=_text(claims.get("sub")),
                        token_id=_text(claims.get("jti")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _email(claims: Mapping[str, Any], claim: str) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or "@" not in value:
        raise Unauthenticated(f"no email in the claim {claim!r}")
    try:
        return check_actor(value).lower()
    except ValueError as exc:
        raise Unauthenticated(f"the claim {claim!r}: {exc}") from None


def _groups(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    value = claims.get(claim)
    if isinstance(value, str):  # some proxies send one string, comma-separated
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str) and v)


# -- demo personas ----------------------------------------------------------------------------------------------

PERSONAS = ("author", "approver", "operator", "viewer", "support")
PERSONA_COOKIE = "campaign_demo_persona"
DEMO_DOMAIN = "demo.example"  # RFC 2606: nobody's mailbox


def persona(name: str, author: str) -> Identity | None:
    """The demo identity `name` picks; the author persona acts as `author` (who runs the command line, so that it
    is the author of what it created and sees the approval refused)."""
    if name not in PERSONAS:
        return None
    email = author if name == "author" else f"{name}@{DEMO_DOMAIN}"
    return Identity(email=email, groups=frozenset({f"demo-{name}"}), proof="demo", persona=name)
