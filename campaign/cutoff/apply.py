"""The settings service (`[apply] kind = "http"`, SPEC G14): the HTTP contract of docs/apply.md, one request a
try, and the retry policy around it.

`HttpSettingsService.send` POSTs one batch and returns the service's answer for each change, or raises
`Transient` (a 5xx, 408 or 429, no whole answer within `timeout_seconds`, a refused or dropped connection: the
same batch goes again under the same Idempotency-Key) or `Refused` (any other answer: a 4xx for the whole
batch, or one outside the contract; the flip pauses with it). `Retry` says how long to wait between tries.
The bearer token is read from the environment when the service is opened, sent in one header, and never
stored, logged or printed: every text the service sends back goes through `redaction.redact` before it is
put in a reason, and a value it reports is checked as an imported setting value is before it is kept.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx

from campaign import deadlines, redaction
from campaign.definition import Apply
from campaign.errors import ConfigError
from campaign.validation import setting_value_problem

STATUSES = ("applied", "conflict", "unknown_device")
TRANSIENT_4XX = (408, 429)  # "request timeout", "too many requests": later, the same batch may well pass
SHOWN = 300  # characters of a refusal's body quoted in the reason
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a 200's body, read at most; a larger one is outside the contract
REFUSAL_BYTES = 64 * 1024  # of a refusal's body, read at most (its first SHOWN characters are quoted)


@dataclass(frozen=True)
class Change:
    """One change as the contract sends it."""

    change_id: str
    device_id: str
    setting: str
    expect: str  # the value the device must hold now
    value: str  # the value to set


@dataclass(frozen=True)
class Answer:
    """The service's result for one change: its status and the value the device holds now."""

    status: str  # applied | conflict | unknown_device
    value: str | None


class Transient(Exception):
    """No usable answer this time (5xx, 408, 429, timeout, connection refused or dropped): try again, same key."""


class Refused(Exception):
    """The service refused the whole batch (4xx), or answered outside the contract: a person must look."""


class SettingsService(Protocol):
    def send(self, key: str, operation: str, changes: Sequence[Change]) -> dict[str, Answer]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Retry:
    """Between tries of one batch: `base × 2^(n−1)` seconds after the n-th failed try, capped at `cap`, varied
    by ±`jitter`; at most `attempts` tries, then the run stops and the batch waits for the next one."""

    attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2

    def delay(self, failed: int, rnd: random.Random | None = None) -> float:
        wait = min(self.cap, self.base * 2 ** (failed - 1))
        spread = (rnd or random).uniform(-self.jitter, self.jitter)
        return max(0.0, wait * (1 + spread))


def token_from_env(a: Apply) -> str:
    """The bearer token from the variable `token_env` names; a clear error when it is not set. From then on the
    redaction step removes it from every text another system sends back."""
    token = os.environ.get(a.token_env, "")
    if not token.strip():
        raise ConfigError(f"[apply] kind = \"http\": set the environment variable {a.token_env} to the settings "
                          "service's bearer token (the definition's token_env names it)")
    redaction.hold(token)
    return token.strip()


def answer_problem(change: Change, status: Any, value: Any, secrets: Sequence[str] = ()) -> str | None:
    """None when (`status`, `value`) is an answer the contract allows for `change`; else what is wrong, in words
    that never quote what the service sent (it may carry a secret, or junk that must not be stored).

    A device counts as switched only when the service holds the value asked for: an `applied` must report that
    value (or none); any value reported must be one a device may hold (`validation.setting_value_problem`, the
    rule of an imported setting value), and hold none of `secrets` (`redaction.secrets()`): a value is kept as
    it is, so it cannot be redacted."""
    if status not in STATUSES:
        return f"a result's status is none of {', '.join(STATUSES)}"
    if value is None:
        return "a conflict must say the value the device holds" if status == "conflict" else None
    if not isinstance(value, str):
        return "a result's value is neither a string nor null"
    problem = setting_value_problem(value)
    if problem:
        return f"the value the settings service reports is not a setting value: it {problem}"
    if any(secret in value for secret in secrets):
        return "the value the settings service reports holds a secret of this process (the token it was sent?)"
    if status == "applied" and value != change.value:
        return (f"the settings service answered applied, but reports another value than {change.value!r}, the one "
                "it was asked to set: the device does not count as switched")
    return None


class HttpSettingsService:
    """The contract over HTTP with httpx: one persistent connection, TLS verified (the system's authorities; a
    private one goes in SSL_CERT_FILE), no proxy but the definition's (none from the environment: the request
    carries the token), redirects not followed (the URL is the endpoint). `timeout_seconds` bounds each request
    whole — connecting, sending and the whole answer — and a 200's body is read up to `MAX_ANSWER_BYTES`."""

    def __init__(self, a: Apply, campaign: str, token: str) -> None:
        assert a.url is not None
        self.url = a.url
        self.campaign = campaign
        self.timeout = a.timeout_seconds
        redaction.hold(token)
        transport = httpx.HTTPTransport(verify=ssl.create_default_context(), proxy=a.proxy, trust_env=False)
        self._deadline = deadlines.bound(transport)
        self._client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                                    timeout=httpx.Timeout(a.timeout_seconds),
                                    headers={"Authorization": f"Bearer {token}",
                                             "Content-Type": "application/json",
                                             "Accept": "application/json",
                                             "Accept-Encoding": "identity",
                                             "User-Agent": "campaign"})

    def __enter__(self) -> HttpSettingsService:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def body(self, operation: str, changes: Sequence[Change]) -> bytes:
        return json.dumps({"campaign": self.campaign, "operation": operation, "changes": [
            {"change_id": c.change_id, "device_id": c.device_id, "setting": c.setting, "expect": c.expect,
             "value": c.value} for c in changes]}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def send(self, key: str, operation: str, changes: Sequence[Change]) -> dict[str, Answer]:
        """One try, over within `timeout_seconds` whatever the service does: POST the batch; the answer for each
        change by its change_id."""
        self._deadline.at = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, content=self.body(operation, changes),
                                     headers={"Idempotency-Key": key}) as response:
                code = response.status_code
                said = f"HTTP {code} {redaction.redact(response.reason_phrase, SHOWN)}".rstrip()
                if code >= 500 or code in TRANSIENT_4XX:
                    raise Transient(said)
                if code != 200:
                    body, _whole = deadlines.read_capped(response, REFUSAL_BYTES)
                    text = redaction.redact(body.decode("utf-8", "replace"), SHOWN)
                    raise Refused(said + (f": {text}" if text else ""))
                body, whole = deadlines.read_capped(response, MAX_ANSWER_BYTES)
                if not whole:
                    raise Refused(f"HTTP 200, but the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB (the "
                                  "contract's answer to one batch is far smaller): not read")
        except httpx.TimeoutException as exc:
            raise Transient(f"no whole answer within timeout_seconds = {self.timeout:g} ({type(exc).__name__})") \
                from None
        except httpx.TransportError as exc:  # refused, reset, dropped, TLS
            raise Transient(f"connection failed: {redaction.redact(exc, SHOWN) or type(exc).__name__}") from None
        except httpx.DecodingError:
            raise Refused("HTTP 200, but its body cannot be decoded (Content-Encoding)") from None
        finally:
            self._deadline.at = None
        return self._answers(body, changes)

    def _answers(self, body: bytes, changes: Sequence[Change]) -> dict[str, Answer]:
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested beyond the parser's depth
            raise Refused("HTTP 200, but the body is not JSON (the contract: {\"results\": [...]})") from None
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise Refused("HTTP 200, but the body has no \"results\" list")
        sent = {c.change_id: c for c in changes}
        secrets = redaction.secrets()
        out: dict[str, Answer] = {}
        for r in results:
            change_id = r.get("change_id") if isinstance(r, dict) else None
            if not isinstance(change_id, str) or change_id not in sent:
                raise Refused("a result for a change this batch does not hold: "
                              f"{redaction.redact(json.dumps(r, ensure_ascii=False), SHOWN)}")
            if change_id in out:
                raise Refused(f"two results for change {change_id!r}")
            status, value = r.get("status"), r.get("value")
            problem = answer_problem(sent[change_id], status, value, secrets)
            if problem:
                raise Refused(f"change {change_id!r}: {problem}")
            out[change_id] = Answer(status, value)
        if len(out) < len(sent):
            missing = sent.keys() - out.keys()
            raise Refused(f"no result for {len(missing)} change(s) of the batch (e.g. {min(missing)!r})")
        return out
