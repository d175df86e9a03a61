"""`[providers.NAME]` of campaign.toml: which mail providers may post their events to `campaign serve`
(`POST /events/{provider}`, docs/providers.md) and how each proves a request is its own. Read once with the rest of
the configuration (`campaign.config`); the secrets themselves stay in the environment, named here.

A provider not configured is not served (404): an event endpoint nobody set up accepts nothing."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import ConfigError
from campaign.redaction import hold
from campaign.wording import did_you_mean

PROVIDERS = ("ses", "sendgrid", "postmark", "mailgun")
# SNS signs with a certificate it serves from https://sns.<region>.amazonaws.com/… (amazonaws.com.cn in China).
SNS_HOSTS = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
MAX_AGE = 600  # seconds: how old a signed timestamp (SendGrid, Mailgun) may be, by default
_KEYS: dict[str, tuple[str, ...]] = {
    "ses": ("certificate_hosts", "topic_arns", "confirm_subscriptions", "test_certificate_file"),
    "sendgrid": ("public_key", "public_key_env", "max_age_seconds"),
    "postmark": ("user_env", "password_env"),
    "mailgun": ("signing_key_env", "max_age_seconds"),
}


@dataclass(frozen=True)
class Provider:
    """One provider's settings. Secrets stay in the environment variables named until `campaign serve` reads
    them (`resolved`): every other command loads campaign.toml without needing them. Once read they are held for
    redaction and never shown (`repr` leaves them out)."""

    name: str
    source: str
    # ses
    certificate_hosts: str = SNS_HOSTS
    topic_arns: tuple[str, ...] = ()  # empty: any topic whose message verifies
    confirm_subscriptions: bool = False
    test_certificate_file: Path | None = None  # tests only: this certificate signs every message, whatever URL
    # sendgrid
    public_key: bytes | None = field(default=None, repr=False)  # DER (SubjectPublicKeyInfo)
    # postmark
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    # mailgun
    signing_key: bytes | None = field(default=None, repr=False)
    max_age_seconds: int = MAX_AGE
    env: Mapping[str, str] = field(default_factory=dict)  # field → the environment variable holding it

    def resolved(self, environ: Mapping[str, str] | None = None) -> Provider:
        """The settings with their secrets read from the environment; ConfigError names the variable missing."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in self.env.items():
            where = f"{self.source}: [providers.{self.name}] {name}_env"
            secret = environ.get(var, "").strip()
            if not secret:
                raise ConfigError(f"{where}: the environment variable {var} is not set (the secret lives there, "
                                  "never in campaign.toml)")
            hold(secret)
            values[name] = _der_key(secret, where) if name == "public_key" else \
                secret.encode("utf-8") if name == "signing_key" else secret
        return dataclasses.replace(self, **values)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string")
    return value.strip()


_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: Any, where: str) -> str:
    var = _string(value, where)
    if not _VAR_RE.match(var):
        raise ConfigError(f"{where}: {var[:60]!r} is not an environment variable's name (name the variable "
                          "that holds the secret, not the secret)")
    return var


def _der_key(text: str, where: str) -> bytes:
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not base64 (paste the verification key SendGrid shows under Mail Settings "
                          "→ Signed Event Webhook)") from None
    if not der:
        raise ConfigError(f"{where} is empty")
    return der


def _one(name: str, data: Any, path: Path) -> Provider:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: providers.{name} must be a table ([providers.{name}])")
    known = _KEYS[name]
    values: dict[str, Any] = {"name": name, "source": str(path)}
    env: dict[str, str] = {}
    for key, value in data.items():
        where = f"{path}: [providers.{name}] {key}"
        if key not in known:
            raise ConfigError(f"{path}: [providers.{name}] has no key {key!r}{did_you_mean(key, known)} "
                              f"(known: {', '.join(known)})")
        if key == "certificate_hosts":
            pattern = _string(value, where)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}: not a regular expression ({exc})") from None
            values[key] = pattern
        elif key == "topic_arns":
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ConfigError(f"{where} must be a list of topic ARNs")
            values[key] = tuple(v.strip() for v in value)
        elif key == "confirm_subscriptions":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            values[key] = value
        elif key == "test_certificate_file":
            cert = (path.parent / _string(value, where)).resolve()
            if not cert.is_file():
                raise ConfigError(f"{where}: no file {cert}")
            values[key] = cert
        elif key == "public_key":
            values[key] = _der_key(_string(value, where), where)
        elif key.endswith("_env"):
            env[key[:-len("_env")]] = _env_name(value, where)
        elif key == "max_age_seconds":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 86400:
                raise ConfigError(f"{where} must be a whole number of seconds from 1 to 86400")
            values[key] = value
    needs = {"sendgrid": (("public_key",), "public_key or public_key_env"),
             "mailgun": (("signing_key",), "signing_key_env"),
             "postmark": (("user", "password"), "user_env and password_env")}
    if name in needs and any(values.get(f) is None and f not in env for f in needs[name][0]):
        raise ConfigError(f"{path}: [providers.{name}] needs {needs[name][1]} (see docs/providers.md)")
    if "public_key" in values and "public_key" in env:
        raise ConfigError(f"{path}: [providers.sendgrid] has public_key and public_key_env: keep one")
    return Provider(**values, env=env)


def providers_config(data: Any, path: Path) -> dict[str, Provider]:
    """`[providers]` read from `path`: each known provider's table checked key by key, the file and key named in
    every message (the secrets are read by `Provider.resolved` when `campaign serve` starts)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: providers must be a table ([providers.ses], [providers.sendgrid], …)")
    out: dict[str, Provider] = {}
    for name, table in data.items():
        if name not in PROVIDERS:
            raise ConfigError(f"{path}: [providers.{name}] is not a provider we take events from"
                              f"{did_you_mean(name, PROVIDERS)} (known: {', '.join(PROVIDERS)})")
        out[name] = _one(name, table, path)
    return out
