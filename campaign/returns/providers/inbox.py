"""One request of a provider, start to end: verify it is the provider's own (`verify`), read its events
(`events`), take them in (`take`). `campaign serve` calls `Inbox.receive` from `POST /events/{provider}` (in a
thread: it may fetch SNS's certificate, and it writes the database).

SNS also posts a SubscriptionConfirmation when a topic is first pointed at the URL: it is verified like any
message and recorded (an audit event with the topic and the URL that confirms it); the URL is opened only with
`confirm_subscriptions = true`, and only when it is an https URL of an SNS host."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine

from campaign import db
from campaign.errors import ConfigError
from campaign.provider_config import Provider
from campaign.redaction import redact
from campaign.returns.providers import events, take, verify
from campaign.returns.providers.events import Malformed
from campaign.returns.providers.verify import MALFORMED, Refused

log = logging.getLogger("campaign.providers")
CONFIRM_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """What the provider is told (200, JSON)."""

    body: dict[str, Any]


def _json(body: bytes, signed: bool) -> Any:
    """The body as JSON: a body that is not is Malformed (400) once a signature vouched for it, else refused."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        if signed:
            raise Malformed("the body is not JSON") from None
        raise Refused(MALFORMED, "the body is not JSON") from None


class Inbox:
    """The configured providers, their keys read once (`check` refuses a bad one before the server starts)."""

    def __init__(self, engine: Engine, providers: Mapping[str, Provider],
                 fetch: Callable[[str], bytes] = verify.fetch_certificate) -> None:
        self.engine = engine
        self.providers = {name: p.resolved() for name, p in providers.items()}
        self.certificates = verify.Certificates(self.providers["ses"], fetch) if "ses" in self.providers else None
        self.sendgrid_key = verify.sendgrid_key(self.providers["sendgrid"]) if "sendgrid" in self.providers \
            else None
        ses = self.providers.get("ses")
        if ses is not None and ses.test_certificate_file is not None:
            log.warning("[providers.ses] test_certificate_file is set: SNS messages are verified against %s, not "
                        "against Amazon's certificates. For tests only.", ses.test_certificate_file)

    @staticmethod
    def check(provider: Provider) -> None:
        """ConfigError when `provider`'s secrets are not in the environment or its key is not one."""
        p = provider.resolved()
        if p.name == "sendgrid":
            verify.sendgrid_key(p)
        if p.test_certificate_file is not None:
            try:
                verify.Certificates(p)
            except Refused as exc:
                raise ConfigError(f"{p.source}: [providers.ses] test_certificate_file: {exc}") from None

    def receive(self, name: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Verify, read and take in one request of provider `name` (configured); Refused (401), Malformed (400)."""
        p = self.providers[name]
        now = time.time()
        if name == "ses":
            assert self.certificates is not None
            msg = _json(body, signed=False)
            if not isinstance(msg, dict):
                raise Refused(MALFORMED, "an SNS post is a JSON object")
            verify.verify_sns(p, self.certificates, msg)
            if msg["Type"] != "Notification":
                return self._subscription(p, msg)
            found = events.ses(str(msg.get("MessageId", "")), msg["Message"])
            return Answer(take.take(self.engine, name, found).as_json())
        if name == "sendgrid":
            assert self.sendgrid_key is not None
            verify.verify_sendgrid(p, self.sendgrid_key, headers, body, now)
            return Answer(take.take(self.engine, name, events.sendgrid(_json(body, signed=True))).as_json())
        if name == "mailgun":
            payload = _json(body, signed=False)
            token = verify.verify_mailgun(p, payload, now)
            return Answer(take.take(self.engine, name, events.mailgun(payload),
                                    take.Nonce(token, p.max_age_seconds)).as_json())
        verify.verify_postmark(p, headers)
        return Answer(take.take(self.engine, name, events.postmark(_json(body, signed=True))).as_json())

    def _subscription(self, p: Provider, msg: dict[str, Any]) -> Answer:
        """A (Un)SubscriptionConfirmation: recorded; confirmed only when configured to."""
        topic, url = redact(str(msg.get("TopicArn")), 300), str(msg.get("SubscribeURL") or "")
        confirmed = False
        if msg["Type"] == "SubscriptionConfirmation" and p.confirm_subscriptions:
            confirmed = self._confirm(p, url)
        how = ("confirmed" if confirmed else
               "open its SubscribeURL (in this audit event), or run `aws sns confirm-subscription --topic-arn "
               "TOPIC --token TOKEN` with the token it carries")
        with db.transaction(self.engine, take.actor_of(p.name), "provider.subscription") as tx:
            tx.note(type=msg["Type"], topic=topic, subscribe_url=redact(url, 1000), confirm=how)
        log.warning("providers: SNS %s for topic %s: %s", msg["Type"], topic, how)
        return Answer({"provider": p.name, "type": msg["Type"], "topic": topic, "confirmed": confirmed})

    def _confirm(self, p: Provider, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme != "https" or not re.match(p.certificate_hosts, parts.hostname or ""):
            log.warning("providers: SubscribeURL %s is not an https URL of an SNS host: not opened", redact(url, 300))
            return False
        try:
            with httpx.Client(timeout=CONFIRM_TIMEOUT, follow_redirects=False) as client:
                return client.get(url).status_code == 200
        except httpx.HTTPError as exc:
            log.warning("providers: confirming the SNS subscription failed: %s", type(exc).__name__)
            return False
