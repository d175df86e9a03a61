"""One frozen configuration, loaded once from options, then environment, then `campaign.toml`."""

from __future__ import annotations

import getpass
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import ConfigError
from campaign.redaction import hold
from campaign.validation import check_actor
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

    def __repr__(self) -> str:  # the password never appears, even in a debugger
        pw = "***" if self.smtp_password else None
        return (f"Config(database_url={redact_url(self.database_url)!r}, smtp_url={self.smtp_url!r}, "
                f"smtp_user={self.smtp_user!r}, smtp_password={pw!r}, templates={str(self.templates)!r}, "
                f"actor={self.actor!r})")


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
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key, value in data.items():
            if key not in ENV:
                known = ", ".join(sorted(k for k in ENV if k not in FILE_FORBIDDEN))
                raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, ENV)} (known here: {known}; "
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
