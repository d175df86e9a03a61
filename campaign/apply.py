"""The settings service (`[apply] kind = "http"`, SPEC G14): the HTTP contract of docs/apply.md, one request a
try, and the retry policy around it.

`HttpSettingsService.send` POSTs one batch and returns the service's answer for each change, or raises
`Transient` (a 5xx, 408 or 429, a timeout, a refused or dropped connection: the same batch goes again under
the same Idempotency-Key) or `Refused` (any other answer: a 4xx for the whole batch, or one outside the
contract; the flip pauses with it). `Retry` says how long to wait between tries. The bearer token is read
from the environment when the service is opened, sent in one header, and never stored, logged or printed.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx

from campaign.definition import Apply
from campaign.errors import CampaignError, ConfigError

STATUSES = ("applied", "conflict", "unknown_device")
TRANSIENT_4XX = (408, 429)  # "request timeout", "too many requests": later, the same batch may well pass
SHOWN = 300  # characters of a refusal's body quoted in the reason


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


class ApplyStopped(CampaignError):
    """The flip or rollback stopped with changes still waiting for the service: run it again once the cause is
    fixed (the waiting batches go again under their Idempotency-Keys)."""


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
    """The bearer token from the variable `token_env` names; a clear error when it is not set."""
    token = os.environ.get(a.token_env, "")
    if not token.strip():
        raise ConfigError(f"[apply] kind = \"http\": set the environment variable {a.token_env} to the settings "
                          "service's bearer token (the definition's token_env names it)")
    return token.strip()


class HttpSettingsService:
    """The contract over HTTP with httpx: one persistent connection, TLS verified, `timeout_seconds` for each of
    connecting, sending, waiting for the answer (redirects are not followed: the URL is the endpoint)."""

    def __init__(self, a: Apply, campaign: str, token: str) -> None:
        assert a.url is not None
        self.url = a.url
        self.campaign = campaign
        self._token = token
        self._client = httpx.Client(timeout=httpx.Timeout(a.timeout_seconds), follow_redirects=False,
                                    headers={"Authorization": f"Bearer {token}",
                                             "Content-Type": "application/json",
                                             "Accept": "application/json",
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
        """One try: POST the batch; the answer for each change by its change_id."""
        try:
            response = self._client.post(self.url, content=self.body(operation, changes),
                                         headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            raise Transient(f"no answer within the timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # refused, reset, dropped, TLS
            raise Transient(f"connection failed: {self._clean(str(exc)) or type(exc).__name__}") from None
        code = response.status_code
        if code >= 500 or code in TRANSIENT_4XX:
            raise Transient(f"HTTP {code} {response.reason_phrase}".rstrip())
        if code != 200:
            text = self._clean(response.text.strip())[:SHOWN]
            raise Refused(f"HTTP {code} {response.reason_phrase}".rstrip() + (f": {text}" if text else ""))
        return self._answers(response, changes)

    def _answers(self, response: httpx.Response, changes: Sequence[Change]) -> dict[str, Answer]:
        try:
            data: Any = response.json()
        except ValueError:
            raise Refused("HTTP 200, but the body is not JSON (the contract: {\"results\": [...]})") from None
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise Refused("HTTP 200, but the body has no \"results\" list")
        sent = {c.change_id for c in changes}
        out: dict[str, Answer] = {}
        for r in results:
            change_id = r.get("change_id") if isinstance(r, dict) else None
            if change_id not in sent:
                raise Refused(f"a result for a change this batch does not hold: {self._clean(json.dumps(r))[:SHOWN]}")
            status, value = r.get("status"), r.get("value")
            if status not in STATUSES or (value is not None and not isinstance(value, str)) or \
                    (value is None and status == "conflict") or change_id in out:
                raise Refused(self._wrong(change_id, status, value, change_id in out))
            out[change_id] = Answer(status, value)
        if len(out) < len(sent):
            missing = sent - out.keys()
            raise Refused(f"no result for {len(missing)} change(s) of the batch (e.g. {min(missing)!r})")
        return out

    @staticmethod
    def _wrong(change_id: str, status: Any, value: Any, twice: bool) -> str:
        if twice:
            return f"two results for change {change_id!r}"
        if status not in STATUSES:
            return f"change {change_id!r}: status {status!r} is none of {', '.join(STATUSES)}"
        if value is None:
            return f"change {change_id!r}: a conflict must say the value the device holds"
        return f"change {change_id!r}: value {value!r} is not a string"

    def _clean(self, text: str) -> str:
        """What the service said, safe to show: one line, and never the token, should it echo it."""
        return " ".join(text.replace(self._token, "***").split())
