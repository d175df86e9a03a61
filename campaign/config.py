"""One frozen configuration, loaded once from options, then environment, then `campaign.toml`."""

from __future__ import annotations

import getpass
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign import webhook_config
from campaign.errors import ConfigError
from campaign.provider_config import Provider, providers_config
from campaign.redaction import hold
from campaign.validation import check_actor
from campaign.webhook_config import Endpoint
from campaign.wording import did_you_mean

CONFIG_FILE = "campaign.toml"

# key in campaign.toml / Config attribute -> environment variable
ENV = {
    "database_url": "CAMPAIGN_DATABASE_URL",
    "smtp_url": "CAMPAIGN_SMTP_URL",
    "smtp_user": "CAMPAIGN_SMTP_USER",
    "smtp_password": "CAMPAIGN_SMTP_PASSWORD",
    "templates": "CAMPAIGN_TEMPLATES",
    "actor": "CAMPAIGN_ACTOR",
}
# Never read from a file in the working directory: a password belongs in the environment.
FILE_FORBIDDEN = {"smtp_password"}


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


@dataclass(frozen=True)
class Config:
    """Everything a command needs to know about its surroundings."""

    database_url: str = "sqlite:///campaign.db"
    smtp_url: str = "maildir:./outbox"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    templates: Path = Path("templates")
    actor: str = field(default_factory=_login_name)
    console: ConsoleConfig = field(default_factory=lambda: ConsoleConfig())
    providers: Mapping[str, Provider] = field(default_factory=dict)  # [providers.NAME]: POST /events/NAME
    webhooks: tuple[Endpoint, ...] = ()  # [[webhooks]]: where the campaign's events are posted

    def __repr__(self) -> str:  # the password never appears, even in a debugger
        pw = "***" if self.smtp_password else None
        return (f"Config(database_url={redact_url(self.database_url)!r}, smtp_url={self.smtp_url!r}, "
                f"smtp_user={self.smtp_user!r}, smtp_password={pw!r}, templates={str(self.templates)!r}, "
                f"actor={self.actor!r})")


# -- [console] and [console.roles]: `campaign serve` -----------------------------------------------------------

IDENTITIES = ("jwt", "demo")
# The headers an identity-aware proxy forwards its signed token in (Authorization as `Bearer TOKEN`).
HEADERS = ("Authorization", "X-Forwarded-Access-Token", "X-Pomerium-Jwt-Assertion", "Cf-Access-Jwt-Assertion",
           "X-Goog-IAP-JWT-Assertion")
# Only signatures made with a private key: never `none`, never HS* (a public key used as an HMAC secret is the
# HS/RS confusion attack).
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
ROLES = ("viewer", "operator", "approver", "support")
GROUP = "group:"
_CONSOLE_STRINGS = ("identity", "header", "issuer", "audience", "jwks", "email_claim", "groups_claim")
_CONSOLE_KEYS = (*_CONSOLE_STRINGS, "algorithms", "roles")


@dataclass(frozen=True)
class ConsoleConfig:
    """`[console]` and `[console.roles]` of campaign.toml: how `campaign serve` proves who is asking (a JWT from an
    identity-aware proxy, or the loopback-only demo personas) and what each person may do. Members of a role are
    emails (kept lower-cased) or `group:NAME`."""

    identity: str = "jwt"
    header: str = "Authorization"
    issuer: str | None = None
    audience: str | None = None
    jwks: str | None = None  # an https:// URL (http:// to a loopback host), or a file path
    email_claim: str = "email"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ASYMMETRIC
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict.fromkeys(ROLES, ()))
    source: str = "campaign.toml"  # the file it came from, for messages

    def missing(self) -> list[str]:
        """The keys `identity = "jwt"` needs that are not set."""
        if self.identity != "jwt":
            return []
        return [k for k in ("issuer", "audience", "jwks") if not getattr(self, k)]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _member(value: str, where: str) -> str:
    if value.startswith(GROUP):
        if not value[len(GROUP):].strip():
            raise ConfigError(f"{where}: {value!r} names no group (write group:NAME)")
        return value
    if "@" not in value or any(ch.isspace() for ch in value):
        raise ConfigError(f"{where}: {value!r} is neither an email address nor group:NAME")
    return value.lower()


def console_config(data: Any, path: Path) -> ConsoleConfig:
    """`[console]` (with its `[console.roles]`) read from `path`: unknown keys refused with a "did you mean",
    every value's type checked, the file and key named in every message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: console must be a table ([console])")
    values: dict[str, Any] = {"source": str(path)}
    for key, value in data.items():
        where = f"{path}: [console] {key}"
        if key not in _CONSOLE_KEYS:
            raise ConfigError(f"{path}: [console] has no key {key!r}{did_you_mean(key, _CONSOLE_KEYS)} "
                              f"(known: {', '.join(_CONSOLE_KEYS)})")
        if key in _CONSOLE_STRINGS:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where} must be a non-empty string")
            values[key] = value.strip()
        elif key == "algorithms":
            algs = _strings(value, where)
            wrong = [a for a in algs if a not in ASYMMETRIC]
            if wrong or not algs:
                raise ConfigError(f"{where}: {', '.join(wrong) or 'an empty list'} refused: only asymmetric "
                                  f"signatures are accepted ({', '.join(ASYMMETRIC)}); never none or HS*")
            values[key] = algs
        else:
            values[key] = _roles(value, path)
    if values.get("identity", "jwt") not in IDENTITIES:
        raise ConfigError(f"{path}: [console] identity must be one of {', '.join(IDENTITIES)}, not "
                          f"{values['identity']!r}")
    if "header" in values:
        canonical = {h.lower(): h for h in HEADERS}
        if values["header"].lower() not in canonical:
            raise ConfigError(f"{path}: [console] header {values['header']!r} is not one we read "
                              f"(one of {', '.join(HEADERS)})")
        values["header"] = canonical[values["header"].lower()]
    return ConsoleConfig(**values)


def _roles(data: Any, path: Path) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: console.roles must be a table ([console.roles])")
    roles: dict[str, tuple[str, ...]] = dict.fromkeys(ROLES, ())
    for role, members in data.items():
        if role not in ROLES:
            raise ConfigError(f"{path}: [console.roles] has no role {role!r}{did_you_mean(role, ROLES)} "
                              f"(roles: {', '.join(ROLES)})")
        where = f"{path}: [console.roles] {role}"
        roles[role] = tuple(_member(m, where) for m in _strings(members, where))
    return roles


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def load_config(
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Merge command-line options (strongest), environment variables, and `campaign.toml`."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    values: dict[str, Any] = {}

    path = cwd / CONFIG_FILE
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key, value in data.items():
            if key == "console":
                values["console"] = console_config(value, path)
                continue
            if key == "providers":
                values["providers"] = providers_config(value, path)
                continue
            if key == "webhooks":
                values["webhooks"] = webhook_config.endpoints(value, path, text)
                continue
            if key not in ENV:
                known = ", ".join(sorted([*(k for k in ENV if k not in FILE_FORBIDDEN), "[console]", "[providers]",
                                          "[[webhooks]]"]))
                hint = did_you_mean(key, [*ENV, "console", "providers", "webhooks"])
                raise ConfigError(f"{path}: unknown key {key!r}{hint} (known here: {known}; "
                                  "the SMTP password only from CAMPAIGN_SMTP_PASSWORD)")
            if key in FILE_FORBIDDEN:
                raise ConfigError(f"{path}: {key} may not be kept in a file; set {ENV[key]} instead")
            if not isinstance(value, str):
                raise ConfigError(f"{path}: {key} must be a string")
            values[key] = value

    for key, var in ENV.items():
        if environ.get(var):
            values[key] = environ[var]
    values.update(options)

    if "templates" in values:
        values["templates"] = Path(values["templates"])
    hold(values.get("smtp_password"))  # redacted from every outside text from now on
    if "actor" in values:
        try:
            values["actor"] = check_actor(values["actor"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return Config(**values)
