"""What the mail provider saw (issue 25 item 3), through a real `campaign serve` on loopback, on SQLite and
PostgreSQL: notices sent through a real SMTP server, then SES (through SNS, signature versions 1 and 2, against a
certificate made here), SendGrid (ECDSA), Mailgun (HMAC, tokens) and Postmark (basic auth) post their events —
valid, badly signed, unsigned, stale and replayed. A bounce un-tells and suppresses, a complaint suppresses, a
delivered event shows in `report --account` and the CSV; a replay changes nothing; a refusal is a bare 401,
counted."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text

from campaign.config import Config, ConsoleConfig, load_config
from campaign.errors import ConfigError
from campaign.provider_config import Provider
from campaign.returns.providers import verify
from campaign.returns.providers.verify import Certificates, Refused
from tests.conftest import ROOT, CliRun, table_counts
from tests.consoled import Console, serving
from tests.smtpd import SmtpServer
from tests.test_bounces import BOUNCES, KEY, SLUG, definition

N = 8
ACCOUNTS = "account_id,email,name,locale,timezone,country\n" + "".join(
    f"a{i:03d},user{i}@example.com,User {i},en-US,America/New_York,US\n" for i in range(N))
DEVICES = "device_id,account_id,name,model,voice_recordings\n" + "".join(
    f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(N))
MAILGUN_KEY = "key-" + "m" * 32
PM_USER, PM_PASSWORD = "postmark-hook", "pm-password-" + "p" * 20
TOPIC = "arn:aws:sns:eu-west-1:123456789012:campaign-events"


# -- keys and certificates made here ---------------------------------------------------------------------

def sns_certificate(tmp: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    path = tmp / "sns.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, path


def sns_message(key: rsa.RSAPrivateKey, message: Any, *, version: str = "2", kind: str = "Notification",
                **fields: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"Type": kind, "MessageId": str(uuid.uuid4()), "TopicArn": TOPIC,
                           "Message": message if isinstance(message, str) else json.dumps(message),
                           "Timestamp": "2031-03-08T07:00:00.000Z", "SignatureVersion": version,
                           "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
                           **fields}
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    msg["Signature"] = base64.b64encode(key.sign(verify.sns_string_to_sign(msg), padding.PKCS1v15(),
                                                 digest)).decode()
    return msg


def ses_event(kind: str, message_id: str, email: str, **body: Any) -> dict[str, Any]:
    mail = {"timestamp": "2031-03-08T07:00:00.000Z", "messageId": f"0100-ses-{uuid.uuid4().hex}",
            "source": "bounces@example.com", "destination": [email],
            "commonHeaders": {"messageId": message_id, "to": [email]}}
    return {"eventType": kind, "mail": mail, **body}


def sendgrid_post(key: ec.EllipticCurvePrivateKey, events: list[dict[str, Any]],
                  timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {verify.SENDGRID_SIGNATURE: base64.b64encode(sig).decode(), verify.SENDGRID_TIMESTAMP: ts}


def mailgun_post(event: dict[str, Any], *, key: str = MAILGUN_KEY, token: str | None = None,
                 timestamp: int | None = None) -> bytes:
    ts, token = str(int(time.time()) if timestamp is None else timestamp), token or uuid.uuid4().hex * 2
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps({"signature": {"timestamp": ts, "token": token, "signature": sig},
                       "event-data": event}).encode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- the campaign, sent, and the console serving the providers ---------------------------------------------

@dataclasses.dataclass
class World:
    url: str
    console: Console
    engine: Engine
    mids: dict[str, str]  # email → our Message-ID of its notice
    sns_key: rsa.RSAPrivateKey
    sendgrid_key: ec.EllipticCurvePrivateKey

    def post(self, provider: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/events/{provider}", content=body, headers=headers or {}, timeout=30)

    def refused(self, provider: str, reason: str) -> float:
        registry = self.console.server.config.app.state.metrics
        return registry.get_sample_value("campaign_provider_events_refused_total",
                                         {"provider": provider, "reason": reason}) or 0.0


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


def notice(engine: Engine) -> dict[str, tuple[str, Any, Any]]:
    """email → (state, delivered_at, accepted_by) of the notice."""
    return {r[0]: r[1:] for r in rows(engine, "SELECT d.email, d.state, d.delivered_at, d.accepted_by FROM delivery "
                                              "d JOIN wave w ON w.id = d.wave_id WHERE w.name = 'notice'")}


def utc(t: dt.datetime | str) -> dt.datetime:
    """A time as read by plain SQL: naive UTC text on SQLite, aware on PostgreSQL."""
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t)
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def suppressed(engine: Engine) -> dict[str, str]:
    return dict(rows(engine, "SELECT email, source FROM suppression"))


@pytest.fixture
def world(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path, smtpd: SmtpServer, db_url: str,
          engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("CAMPAIGN_BOUNCE_KEY", KEY)
    monkeypatch.setenv("MAILGUN_SIGNING_KEY", MAILGUN_KEY)
    monkeypatch.setenv("PM_USER", PM_USER)
    monkeypatch.setenv("PM_PASSWORD", PM_PASSWORD)
    env = {"CAMPAIGN_SMTP_URL": smtpd.url, "CAMPAIGN_BOUNCE_KEY": KEY}
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS))).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES))).exit_code == 0
    assert run_cli("create", str(definition(tmp_path, bounces=BOUNCES))).exit_code == 0
    result = run_cli("send", SLUG, "--wave", "notice", "--ignore-window", "--workers", "1", env=env)
    assert result.exit_code == 0, result.output
    mids = dict(rows(engine, "SELECT email, message_id FROM delivery"))
    assert len(mids) == N and all(m.startswith("<") for m in mids.values())
    sns_key, cert = sns_certificate(tmp_path)
    sg_key = ec.generate_private_key(ec.SECP256R1())
    sg_public = base64.b64encode(sg_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    providers = {
        "ses": Provider("ses", "campaign.toml", topic_arns=(TOPIC,), test_certificate_file=cert),
        "sendgrid": Provider("sendgrid", "campaign.toml", public_key=base64.b64decode(sg_public)),
        "mailgun": Provider("mailgun", "campaign.toml", env={"signing_key": "MAILGUN_SIGNING_KEY"}),
        "postmark": Provider("postmark", "campaign.toml", env={"user": "PM_USER", "password": "PM_PASSWORD"}),
    }
    config = Config(database_url=db_url, templates=ROOT / "templates", actor="test",
                    console=ConsoleConfig(identity="demo"), providers=providers)
    with serving(config, engine) as console:
        yield World(console.url, console, engine, mids, sns_key, sg_key)


# -- SES through SNS ---------------------------------------------------------------------------------------

def test_ses_events_signed_by_sns(world: World, run_cli: CliRun) -> None:
    w, e = world, world.engine
    delivered = sns_message(w.sns_key, ses_event("Delivery", w.mids["user0@example.com"], "user0@example.com",
                            delivery={"timestamp": "2031-03-08T07:00:05.000Z", "recipients": ["user0@example.com"],
                                      "smtpResponse": "250 2.0.0 OK 1700000000 x1", "reportingMTA":
                                      "a8-1.smtp-out.amazonses.com", "remoteMtaIp": "192.0.2.25"}))
    bounce = sns_message(w.sns_key, ses_event("Bounce", w.mids["user1@example.com"], "user1@example.com",
                         bounce={"bounceType": "Permanent", "bounceSubType": "General", "timestamp":
                                 "2031-03-08T07:01:00.000Z", "bouncedRecipients": [
                                     {"emailAddress": "user1@example.com", "status": "5.1.1",
                                      "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}), version="1")
    complaint = sns_message(w.sns_key, ses_event("Complaint", w.mids["user2@example.com"], "user2@example.com",
                            complaint={"complaintFeedbackType": "abuse", "timestamp": "2031-03-08T08:00:00.000Z",
                                       "complainedRecipients": [{"emailAddress": "user2@example.com"}]}))
    for msg in (delivered, bounce, complaint):
        r = w.post("ses", json.dumps(msg).encode(), {"Content-Type": "text/plain; charset=UTF-8"})
        assert r.status_code == 200, r.text
        assert r.json()["new"] == 1
    states = notice(e)
    assert states["user0@example.com"][0] == "sent"
    assert utc(states["user0@example.com"][1]) == dt.datetime(2031, 3, 8, 7, 0, 5, tzinfo=dt.UTC)
    assert states["user0@example.com"][2] == "a8-1.smtp-out.amazonses.com (192.0.2.25)"
    assert states["user1@example.com"][0] == "bounced"  # un-told
    assert states["user2@example.com"][0] == "sent"  # a complaint: they got it
    assert suppressed(e) == {"user1@example.com": "bounce", "user2@example.com": "complaint"}

    story = run_cli("report", SLUG, "--account", "a000")
    assert story.exit_code == 0, story.output
    assert "accepted by the recipient's mail server at 2031-03-08 07:00 UTC" in story.output
    assert "a8-1.smtp-out.amazonses.com (192.0.2.25)" in story.output
    as_csv = run_cli("report", SLUG, "--format", "csv")
    assert "notice_delivered_at" in as_csv.output.splitlines()[0]
    assert "2031-03-08T07:00:05" in as_csv.output

    # the same messages again (SNS retries, or someone replays them): nothing changes
    before = table_counts(e)
    for msg in (delivered, bounce, complaint):
        r = w.post("ses", json.dumps(msg).encode())
        assert r.status_code == 200 and r.json()["already"] == 1 and r.json()["new"] == 0
    assert table_counts(e) == before

    # tampered with, or signed by another key, or unsigned: 401, counted, nothing written
    tampered = {**bounce, "Message": bounce["Message"].replace("user1", "user3")}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = sns_message(other_key, ses_event("Complaint", w.mids["user4@example.com"], "user4@example.com",
                                              complaint={"complainedRecipients": [{}]}))
    unsigned = {k: v for k, v in delivered.items() if k != "Signature"}
    other_topic = sns_message(w.sns_key, "{}", TopicArn="arn:aws:sns:eu-west-1:999999999999:not-ours")
    for msg, reason in ((tampered, "bad_signature"), (forged, "bad_signature"), (unsigned, "unsigned"),
                        (other_topic, "topic")):
        counted = w.refused("ses", reason)
        r = w.post("ses", json.dumps(msg).encode())
        assert r.status_code == 401 and r.text == "401 Unauthorized: the request's signature does not verify.\n"
        assert w.refused("ses", reason) == counted + 1
    assert w.post("ses", b"not json").status_code == 401
    assert w.refused("ses", "bad_signature") == 2 and w.refused("ses", "unsigned") == 1
    assert w.refused("ses", "topic") == 1 and w.refused("ses", "malformed") == 1
    assert table_counts(e) == before


def test_a_subscription_is_recorded_and_not_confirmed_unless_asked(world: World) -> None:
    msg = sns_message(world.sns_key, "You have chosen to subscribe", kind="SubscriptionConfirmation",
                      Token="tok-123", SubscribeURL="https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
                                                    "&Token=tok-123")
    r = world.post("ses", json.dumps(msg).encode())
    assert r.status_code == 200 and r.json()["confirmed"] is False
    (detail,) = rows(world.engine, "SELECT detail FROM audit_event WHERE action = 'provider.subscription'")[0]
    recorded = json.loads(detail)
    assert recorded["topic"] == TOPIC and "Action=ConfirmSubscription" in recorded["subscribe_url"]
    assert "aws sns confirm-subscription" in recorded["confirm"]


def test_the_signing_certificate_must_come_from_sns_and_is_fetched_once(tmp_path: Path) -> None:
    key, cert = sns_certificate(tmp_path)
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return cert.read_bytes()

    certs = Certificates(Provider("ses", "campaign.toml"), fetch)
    msg = sns_message(key, "{}")
    verify.verify_sns(Provider("ses", "x"), certs, msg)
    verify.verify_sns(Provider("ses", "x"), certs, sns_message(key, "{}", version="1"))
    assert fetched == [msg["SigningCertURL"]]  # cached
    for url in ("http://sns.eu-west-1.amazonaws.com/c.pem", "https://sns.eu-west-1.amazonaws.com.evil.example/c.pem",
                "https://evil.example/sns.eu-west-1.amazonaws.com/c.pem", "https://127.0.0.1/c.pem",
                "https://sns.eu-west-1.amazonaws.com:8443/c.pem", "https://u@sns.eu-west-1.amazonaws.com/c.pem"):
        with pytest.raises(Refused) as refused:
            verify.verify_sns(Provider("ses", "x"), certs, sns_message(key, "{}", SigningCertURL=url))
        assert refused.value.reason == "certificate"
    assert len(fetched) == 1


# -- SendGrid ----------------------------------------------------------------------------------------------

def test_sendgrid_signed_event_webhook(world: World) -> None:
    w, e = world, world.engine
    events = [
        {"event": "delivered", "email": "user3@example.com", "timestamp": 1930000000, "smtp-id": w.mids[
            "user3@example.com"], "sg_event_id": "sg-1", "sg_message_id": "abc.filter001", "response": "250 OK"},
        {"event": "bounce", "type": "bounce", "email": "user4@example.com", "timestamp": 1930000001,
         "smtp-id": w.mids["user4@example.com"], "sg_event_id": "sg-2", "status": "5.1.1",
         "reason": "550 5.1.1 no such user"},
        {"event": "spamreport", "email": "user5@example.com", "timestamp": 1930000002,
         "smtp-id": w.mids["user5@example.com"], "sg_event_id": "sg-3"},
        {"event": "open", "email": "user5@example.com", "timestamp": 1930000003, "sg_event_id": "sg-4"},
    ]
    body, headers = sendgrid_post(w.sendgrid_key, events)
    r = w.post("sendgrid", body, headers)
    assert r.status_code == 200, r.text
    assert r.json()["delivered"] == 1 and r.json()["bounced"] == 1 and r.json()["suppressed"] == 2
    states = notice(e)
    assert states["user3@example.com"][1] is not None and states["user4@example.com"][0] == "bounced"
    assert suppressed(e) == {"user4@example.com": "bounce", "user5@example.com": "complaint"}
    before = table_counts(e)
    assert w.post("sendgrid", body, headers).json()["already"] == 4  # a replay within the window: nothing new
    assert table_counts(e) == before
    other = ec.generate_private_key(ec.SECP256R1())
    forged_body, forged_headers = sendgrid_post(other, events)
    stale_body, stale_headers = sendgrid_post(w.sendgrid_key, events, timestamp=int(time.time()) - 3600)
    tampered = body.replace(b"user4", b"user6")
    for b, h in ((forged_body, forged_headers), (stale_body, stale_headers), (tampered, headers), (body, {})):
        assert w.post("sendgrid", b, h).status_code == 401
    assert w.refused("sendgrid", "bad_signature") == 2
    assert w.refused("sendgrid", "stale") == 1 and w.refused("sendgrid", "unsigned") == 1
    assert table_counts(e) == before


# -- Mailgun -----------------------------------------------------------------------------------------------

def test_mailgun_signatures_and_tokens(world: World) -> None:
    w, e = world, world.engine
    bare = w.mids["user6@example.com"].strip("<>")  # Mailgun quotes the Message-ID without angle brackets
    delivered = {"id": "mg-1", "event": "delivered", "timestamp": time.time(), "recipient": "user6@example.com",
                 "message": {"headers": {"message-id": bare}},
                 "delivery-status": {"code": 250, "message": "OK", "mx-host": "mx.example.net"}}
    body = mailgun_post(delivered)
    assert w.post("mailgun", body).status_code == 200
    assert notice(e)["user6@example.com"][2] == "mx.example.net"
    before = table_counts(e)
    assert w.post("mailgun", body).status_code == 401  # the same token again: a replay
    assert w.refused("mailgun", "replayed") == 1
    assert w.post("mailgun", mailgun_post(delivered, key="key-" + "x" * 32)).status_code == 401
    assert w.post("mailgun", mailgun_post(delivered, timestamp=int(time.time()) - 7200)).status_code == 401
    assert w.refused("mailgun", "bad_signature") == 1 and w.refused("mailgun", "stale") == 1
    assert table_counts(e) == before
    # the same event under a new token (Mailgun retrying): taken, and changes nothing
    again = w.post("mailgun", mailgun_post(delivered))
    assert again.status_code == 200 and again.json()["already"] == 1
    failed = {"id": "mg-2", "event": "failed", "severity": "permanent", "reason": "bounce",
              "timestamp": time.time(), "recipient": "user7@example.com",
              "message": {"headers": {"message-id": w.mids["user7@example.com"].strip("<>")}},
              "delivery-status": {"code": 550, "message": "5.1.1 mailbox unavailable"}}
    assert w.post("mailgun", mailgun_post(failed)).json()["bounced"] == 1
    assert notice(e)["user7@example.com"][0] == "bounced"
    assert suppressed(e) == {"user7@example.com": "bounce"}


# -- Postmark ----------------------------------------------------------------------------------------------

def test_postmark_basic_auth_and_its_own_message_id(world: World) -> None:
    w, e = world, world.engine
    pm_id = str(uuid.uuid4())
    delivery = {"RecordType": "Delivery", "MessageID": pm_id, "Recipient": "user0@example.com",
                "DeliveredAt": "2031-03-08T07:03:00Z", "Details": "smtp;250 2.0.0 OK",
                "Metadata": {"campaign_message_id": w.mids["user0@example.com"]}}
    auth = basic(PM_USER, PM_PASSWORD)
    assert w.post("postmark", json.dumps(delivery).encode(), auth).json()["delivered"] == 1
    # a complaint that names only Postmark's id: found by the id the delivery event taught
    complaint = {"RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "MessageID": pm_id,
                 "Email": "user0@example.com", "BouncedAt": "2031-03-09T10:00:00Z"}
    assert w.post("postmark", json.dumps(complaint).encode(), auth).json()["suppressed"] == 1
    assert suppressed(e) == {"user0@example.com": "complaint"}
    bounce = {"RecordType": "Bounce", "ID": 43, "Type": "HardBounce", "MessageID": str(uuid.uuid4()),
              "Email": "user1@example.com", "Details": "smtp;550 5.1.1 unknown",
              "Content": f"Received: …\r\nMessage-ID: {w.mids['user1@example.com']}\r\nSubject: x\r\n"}
    assert w.post("postmark", json.dumps(bounce).encode(), auth).json()["bounced"] == 1
    before = table_counts(e)
    for headers in ({}, basic(PM_USER, "wrong"), basic("someone", PM_PASSWORD), {"Authorization": "Basic %%%"}):
        assert w.post("postmark", json.dumps(bounce).encode(), headers).status_code == 401
    assert w.refused("postmark", "unsigned") == 1 and w.refused("postmark", "bad_signature") == 3
    assert w.post("postmark", json.dumps(bounce).encode(), auth).json()["already"] == 1
    assert table_counts(e) == before


def test_unknown_providers_large_bodies_and_bad_json(world: World) -> None:
    assert world.post("mandrill", b"{}").status_code == 404
    assert world.post("postmark", b"x" * (4 * 1024 * 1024 + 1), basic(PM_USER, PM_PASSWORD)).status_code == 413
    r = world.post("postmark", b"[not json", basic(PM_USER, PM_PASSWORD))
    assert r.status_code == 400 and "Traceback" not in r.text


# -- configuration ---------------------------------------------------------------------------------------

def test_providers_configuration_names_the_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def load(toml: str) -> Config:
        (tmp_path / "campaign.toml").write_text(toml, encoding="utf-8")
        return load_config(cwd=tmp_path, environ={})

    cases = {
        "[providers.sendgird]\npublic_key = 'x'\n": "did you mean `sendgrid`",
        "[providers.mailgun]\nsigning_key = 'abc'\n": "[providers.mailgun] has no key 'signing_key'",
        "[providers.mailgun]\n": "[providers.mailgun] needs signing_key_env",
        "[providers.sendgrid]\npublic_key = '%%%'\n": "[providers.sendgrid] public_key: not base64",
        "[providers.postmark]\nuser_env = 'U'\npassword_env = 'p4ss w0rd'\n": "not an environment variable",
        "[providers.ses]\ntest_certificate_file = 'missing.pem'\n": "test_certificate_file: no file",
        "[providers.ses]\ncertificate_hosts = '('\n": "not a regular expression",
    }
    for toml, words in cases.items():
        with pytest.raises(ConfigError) as exc:
            load(toml)
        assert str(tmp_path / "campaign.toml") in str(exc.value) and words in str(exc.value), str(exc.value)
    config = load("[providers.mailgun]\nsigning_key_env = 'MG_KEY'\n")  # other commands never need the secret
    monkeypatch.delenv("MG_KEY", raising=False)
    with pytest.raises(ConfigError, match="MG_KEY is not set"):
        config.providers["mailgun"].resolved()
    resolved = config.providers["mailgun"].resolved({"MG_KEY": "s3cret-key"})
    assert resolved.signing_key == b"s3cret-key" and "s3cret" not in repr(resolved)
    sendgrid = load("[providers.sendgrid]\npublic_key = 'AAAA'\n").providers["sendgrid"]
    with pytest.raises(ConfigError, match="not an ECDSA P-256 public key"):
        verify.sendgrid_key(sendgrid)
