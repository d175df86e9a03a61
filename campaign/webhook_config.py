"""`[[webhooks]]` in campaign.toml (issue 25 item 2): where the campaign's events are posted, which of them, how
they are signed. Parsed once with the rest of the configuration; the signing secret is read from the environment
only when something is delivered (`secret`), so a command that posts nothing never needs it.

Every message names the file, the line and the key (`campaign.toml:12: webhooks[2].url: …`), and never shows a
secret: a Standard Webhooks secret lives in the variable `secret_env` names, and a Slack incoming webhook's URL is
itself a secret, so it is held for redaction and never printed."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign import redaction, urls, webhook_events
from campaign.clock import parse_duration
from campaign.errors import ConfigError
from campaign.tomllines import Locator
from campaign.wording import did_you_mean

FORMATS = ("standard", "slack")
PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the Standard Webhooks specification's bounds for a symmetric secret
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
KEYS = ("name", "url", "events", "secret_env", "format", "timeout_seconds", "max_attempts", "max_age")
MAX_AGE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Endpoint:
    """One `[[webhooks]]` table: a receiver of the campaign's events."""

    name: str  # how deliveries and the log name it (the URL may be a secret: never shown)
    url: str = field(repr=False)
    events: tuple[str, ...] = (webhook_events.ALL,)
    secret_env: str | None = None  # standard: the variable holding `whsec_` + base64; slack: none
    format: str = "standard"
    timeout_seconds: float = 10.0  # one request, whole: connecting, sending, the answer
    max_attempts: int = 8  # then the delivery is `failed` (also once it is older than the maximum age)
    # An event this old is no longer offered (an endpoint added later gets the events of this last stretch only),
    # and one not delivered by then is given up.
    max_age: dt.timedelta = MAX_AGE
    where: str = "campaign.toml"  # FILE:LINE: webhooks[N], for messages

    def types(self) -> tuple[str, ...] | None:
        """The event types it wants; None for all."""
        return None if webhook_events.ALL in self.events else self.events


def _default_name(url: str) -> str:
    """The host and a short digest of the whole URL: distinct endpoints on one host stay apart, and the path (a
    Slack URL's token) is not shown."""
    host = urls.split(url).hostname or "endpoint"
    return f"{host[:48]}-{hashlib.sha256(url.encode('utf-8')).hexdigest()[:8]}"


def endpoints(data: Any, path: Path, text: str) -> tuple[Endpoint, ...]:
    """Every `[[webhooks]]` table of campaign.toml at `path` (its `text`, for the lines), checked."""
    where = Locator(text)
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ConfigError(f"{path}:{where.line('webhooks', None)}: webhooks must be [[webhooks]] tables")
    out: list[Endpoint] = []
    for i, table in enumerate(data):
        def fail(key: str | None, message: str, i: int = i) -> ConfigError:
            label = f"webhooks[{i + 1}]" + (f".{key}" if key else "")
            return ConfigError(f"{path}:{where.line('webhooks', key, i)}: {label}: {message}")
        out.append(_endpoint(table, fail, f"{path}:{where.line('webhooks', None, i)}: webhooks[{i + 1}]"))
    seen: set[str] = set()
    for i, e in enumerate(out):
        if e.name in seen:
            raise ConfigError(f"{path}:{where.line('webhooks', 'name', i)}: webhooks[{i + 1}].name: {e.name!r} is "
                              "the name of an earlier endpoint (each endpoint's deliveries are kept under its name)")
        seen.add(e.name)
    return tuple(out)


def _endpoint(t: Mapping[str, Any], fail: Any, label: str) -> Endpoint:
    for key in t:
        if key not in KEYS:
            raise fail(key, f"unknown key{did_you_mean(key, KEYS)} (known here: {', '.join(KEYS)})")
    if "url" not in t:
        raise fail(None, "missing key 'url'")
    url = t["url"]
    if not isinstance(url, str):
        raise fail("url", "must be a string")
    problem = urls.endpoint_problem(url, "a Standard Webhooks secret comes from the variable secret_env names")
    if problem:
        raise fail("url", problem)
    fmt = t.get("format", "standard")
    if fmt not in FORMATS:
        raise fail("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "slack":
        redaction.hold(url)  # a Slack incoming webhook's URL is its secret
    events = t.get("events", [webhook_events.ALL])
    problem = webhook_events.problem(events)
    if problem:
        raise fail("events", problem)
    secret_env = t.get("secret_env")
    if fmt == "standard":
        if not isinstance(secret_env, str) or not ENV_RE.match(secret_env):
            raise fail("secret_env", "must name the environment variable holding the endpoint's signing secret "
                                     "(whsec_ + base64), such as CAMPAIGN_WEBHOOK_SECRET; the secret itself never "
                                     "goes into a file")
    elif secret_env is not None:
        raise fail("secret_env", "goes with format = \"standard\" only: Slack does not check signatures (its URL "
                                 "is the secret)")
    name = t.get("name", _default_name(url))
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail("name", "must be 1 to 64 letters, digits, '.', '_', ':' or '-'")
    timeout = t.get("timeout_seconds", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise fail("timeout_seconds", "must be a number above 0, at most 60 (one request, whole)")
    attempts = t.get("max_attempts", 8)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 30:
        raise fail("max_attempts", "must be a whole number from 1 to 30")
    age = t.get("max_age", "24h")
    try:
        max_age = parse_duration(age) if isinstance(age, str) else None
    except ValueError:
        max_age = None
    if max_age is None or not dt.timedelta(minutes=1) <= max_age <= dt.timedelta(days=90):
        raise fail("max_age", f"must be a duration from 1m to 90d, such as \"24h\" or \"7d\", not {age!r}")
    return Endpoint(name, url, tuple(events), secret_env, fmt, float(timeout), attempts, max_age, label)


def secret(e: Endpoint, environ: Mapping[str, str] | None = None) -> bytes:
    """The endpoint's signing key: the base64 after `whsec_` in the variable `secret_env` names, decoded. A clear
    error (never showing the value) when it is not set or not of that form. Held for redaction from now on."""
    environ = os.environ if environ is None else environ
    assert e.secret_env is not None
    value = environ.get(e.secret_env, "").strip()
    if not value:
        raise ConfigError(f"{e.where} ({e.name}): set the environment variable {e.secret_env} to the endpoint's "
                          "signing secret (whsec_ followed by base64; the receiver holds the same)")
    redaction.hold(value, value.removeprefix(PREFIX))
    try:
        key = base64.b64decode(value.removeprefix(PREFIX), validate=True) if value.startswith(PREFIX) else b""
    except (binascii.Error, ValueError):
        key = b""
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise ConfigError(f"{e.where} ({e.name}): the value of {e.secret_env} is not a Standard Webhooks secret: "
                          f"it must be whsec_ followed by the base64 of {SECRET_BYTES[0]} to {SECRET_BYTES[1]} "
                          "random bytes (e.g. python -c \"import base64,os; print('whsec_' + "
                          "base64.b64encode(os.urandom(32)).decode())\")")
    return key
