"""Is this request the provider's own? Each provider's documented scheme, checked before anything in the body is
believed; a request that fails is `Refused` with a reason (the console answers 401 and counts it by reason).

- Amazon SES through SNS: the SNS message signature (SignatureVersion 1: RSA with SHA1, 2: RSA with SHA256) over
  the canonical string AWS documents ("Verifying the signatures of Amazon SNS messages": the fields Message,
  MessageId, Subject when present, Timestamp, TopicArn, Type of a Notification — Message, MessageId, SubscribeURL,
  Timestamp, Token, TopicArn, Type of a (Un)SubscriptionConfirmation — each as `name\\nvalue\\n`), against the
  certificate at SigningCertURL, which must be https and from a host matching `sns.<region>.amazonaws.com`;
  fetched with a deadline and a size cap, and cached. AWS also advises refusing an unexpected TopicArn:
  `topic_arns` does.
- SendGrid, Signed Event Webhook ("Getting Started with the Event Webhook Security Features"): an ECDSA P-256
  signature with SHA-256 over the `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body, in
  `X-Twilio-Email-Event-Webhook-Signature` (base64 DER); the verification key is base64 DER
  (SubjectPublicKeyInfo). SendGrid documents no timestamp tolerance: we refuse one older than `max_age_seconds`.
- Mailgun ("Securing webhooks"): HMAC-SHA256 under the webhook signing key of `timestamp` + `token`, hex, in the
  body's `signature` object; a token seen before is a replay (the caller keeps them: `provider_nonce`), a
  timestamp older than `max_age_seconds` is refused.
- Postmark signs nothing: its documented protection is HTTP basic auth in the webhook URL
  (`https://USER:PASSWORD@host/events/postmark`), compared here in constant time.

`cryptography` does the RSA and ECDSA arithmetic (already installed with PyJWT[crypto]): no library verifies
these four schemes for us without bringing its provider's whole SDK.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from campaign.errors import ConfigError
from campaign.provider_config import Provider
from campaign.redaction import redact

# why a request was refused: the label of the console's counter
UNSIGNED, BAD_SIGNATURE, STALE, REPLAYED, CERTIFICATE, TOPIC, MALFORMED = (
    "unsigned", "bad_signature", "stale", "replayed", "certificate", "topic", "malformed")
REASONS = (UNSIGNED, BAD_SIGNATURE, STALE, REPLAYED, CERTIFICATE, TOPIC, MALFORMED)

CERT_MAX_BYTES = 64 * 1024  # an SNS signing certificate is about 2 KiB
CERT_TIMEOUT = 5.0  # seconds for the whole fetch
CERTS_CACHED = 16  # SNS rotates its certificate rarely; a few regions at most

_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")


class Refused(Exception):
    """Not the provider's own request: `reason` (one of REASONS) is counted; the message is logged, never sent
    back (it would help whoever forges requests)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- SES through SNS ---------------------------------------------------------------------------------------

def sns_string_to_sign(msg: Mapping[str, Any]) -> bytes:
    """The canonical string of an SNS message: its signed fields, in AWS's order, each `name\\nvalue\\n`."""
    kind = msg.get("Type")
    if kind not in SNS_TYPES:
        raise Refused(MALFORMED, f"SNS Type {str(kind)[:40]!r} is not one we know")
    out = []
    for name in _NOTIFICATION if kind == "Notification" else _CONFIRMATION:
        value = msg.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Refused(MALFORMED, f"SNS message without a text {name}")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


def fetch_certificate(url: str) -> bytes:
    """The certificate at `url`, read with a deadline over the whole request and CERT_MAX_BYTES at most; TLS
    verified, no redirect followed."""
    with httpx.Client(timeout=CERT_TIMEOUT, follow_redirects=False) as client, \
            client.stream("GET", url) as response:
        if response.status_code != 200:
            raise Refused(CERTIFICATE, f"the signing certificate answered {response.status_code}")
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > CERT_MAX_BYTES:
                raise Refused(CERTIFICATE, f"the signing certificate is larger than {CERT_MAX_BYTES} bytes")
        return body


class Certificates:
    """SNS signing keys by certificate URL, fetched once (a few at most are kept). With `test_certificate_file`
    (tests only) that certificate verifies every message and nothing is fetched."""

    def __init__(self, provider: Provider, fetch: Callable[[str], bytes] = fetch_certificate) -> None:
        self.hosts = re.compile(provider.certificate_hosts)
        self.fetch = fetch
        self.fixed = _certificate_key(provider.test_certificate_file.read_bytes()) \
            if provider.test_certificate_file is not None else None
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, url: str) -> rsa.RSAPublicKey:
        if self.fixed is not None:
            return self.fixed
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.username or parts.password or parts.port not in (None, 443) \
                or not self.hosts.match(parts.hostname or "") or not parts.path.endswith(".pem"):
            raise Refused(CERTIFICATE, f"SigningCertURL {redact(url, 200)!r} is not an https URL of an SNS host "
                                       "(sns.<region>.amazonaws.com) ending in .pem")
        with self._lock:
            found = self._keys.get(url)
        if found is not None:
            return found
        try:
            key = _certificate_key(self.fetch(url))
        except httpx.HTTPError as exc:
            raise Refused(CERTIFICATE, f"could not fetch the signing certificate: {type(exc).__name__}") from None
        with self._lock:
            self._keys[url] = key
            while len(self._keys) > CERTS_CACHED:
                self._keys.popitem(last=False)
        return key


def _certificate_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Refused(CERTIFICATE, "the signing certificate is not a PEM certificate") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Refused(CERTIFICATE, "the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(CERTIFICATE, "the signing certificate's key is not RSA")
    return key


def verify_sns(provider: Provider, certificates: Certificates, msg: Mapping[str, Any]) -> None:
    """Refused unless `msg` (an SNS message, parsed) is signed by SNS and, with `topic_arns`, from one of them."""
    if not isinstance(msg.get("Signature"), str) or not isinstance(msg.get("SigningCertURL"), str):
        raise Refused(UNSIGNED, "SNS message without Signature or SigningCertURL")
    # SignatureVersion 1 is SHA1 because SNS signs it so (AWS recommends topics use 2); we can only check it.
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(  # noqa: S303
        str(msg.get("SignatureVersion")))
    if algorithm is None:
        raise Refused(BAD_SIGNATURE, "SNS SignatureVersion is neither 1 nor 2")
    text = sns_string_to_sign(msg)
    try:
        signature = base64.b64decode(msg["Signature"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused(BAD_SIGNATURE, "SNS Signature is not base64") from None
    key = certificates.key(msg["SigningCertURL"])
    try:
        key.verify(signature, text, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise Refused(BAD_SIGNATURE, "SNS signature does not verify") from None
    if provider.topic_arns and msg.get("TopicArn") not in provider.topic_arns:
        raise Refused(TOPIC, f"SNS topic {redact(str(msg.get('TopicArn')), 200)!r} is not in topic_arns")


# -- SendGrid ----------------------------------------------------------------------------------------------

SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


def sendgrid_key(provider: Provider) -> ec.EllipticCurvePublicKey:
    """The verification key of `[providers.sendgrid]`; ConfigError when it is not an EC P-256 public key."""
    try:
        key = serialization.load_der_public_key(provider.public_key or b"")
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{provider.source}: [providers.sendgrid] public_key is not an ECDSA P-256 public key "
                          "(base64 DER, as SendGrid shows it)")
    return key


def _fresh(timestamp: str, max_age: int, now: float, what: str) -> None:
    if not timestamp.isdigit():
        raise Refused(MALFORMED, f"{what} timestamp is not a number")
    if abs(now - int(timestamp)) > max_age:
        raise Refused(STALE, f"{what} timestamp is more than {max_age} s away from now")


def verify_sendgrid(provider: Provider, key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes,
                    now: float) -> None:
    signature, timestamp = headers.get(SENDGRID_SIGNATURE), headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise Refused(UNSIGNED, "no X-Twilio-Email-Event-Webhook-Signature or -Timestamp")
    _fresh(timestamp, provider.max_age_seconds, now, "SendGrid")
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode("ascii") + body,
                   ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(BAD_SIGNATURE, "SendGrid signature does not verify") from None


# -- Mailgun -----------------------------------------------------------------------------------------------

def verify_mailgun(provider: Provider, payload: Any, now: float) -> str:
    """The request's token (the caller refuses one seen before), when the signature verifies."""
    sig = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(sig, dict):
        raise Refused(UNSIGNED, "no signature object in the Mailgun body")
    timestamp, token, given = (str(sig.get(k, "")) for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and given):
        raise Refused(UNSIGNED, "Mailgun signature without timestamp, token or signature")
    if len(token) > 255:
        raise Refused(MALFORMED, "Mailgun token longer than 255 characters")
    expected = hmac.new(provider.signing_key or b"", (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given.lower()):
        raise Refused(BAD_SIGNATURE, "Mailgun signature does not verify")
    _fresh(timestamp, provider.max_age_seconds, now, "Mailgun")
    return token


# -- Postmark ----------------------------------------------------------------------------------------------

def verify_postmark(provider: Provider, headers: Mapping[str, str]) -> None:
    auth = headers.get("authorization", "")
    scheme, _, encoded = auth.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Refused(UNSIGNED, "no HTTP basic credentials")
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        raise Refused(BAD_SIGNATURE, "HTTP basic credentials that do not decode") from None
    # both compared, whatever the first gives: the time taken says nothing about either
    ok_user = hmac.compare_digest(user.encode("utf-8"), (provider.user or "").encode("utf-8"))
    ok_password = hmac.compare_digest(password.encode("utf-8"), (provider.password or "").encode("utf-8"))
    if not (sep and ok_user and ok_password):
        raise Refused(BAD_SIGNATURE, "wrong HTTP basic credentials")
