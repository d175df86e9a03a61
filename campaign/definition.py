"""The campaign definition file (SPEC §5): parse and validate into a frozen `Definition`.

Every error names the file, the line where that can be found, and the key: `PATH:LINE: key: what`.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from campaign import rollout, urls
from campaign.addresses import ascii_domain_form
from campaign.addresses import normalize as normalize_address
from campaign.clock import parse_duration as parse_duration  # durations are the clock's; re-exported for callers
from campaign.errors import InputError, Problem
from campaign.tomllines import Locator
from campaign.validation import has_crlf, normalize_country, normalize_locale
from campaign.verp import parse_return_path  # the token's rules live with the token
from campaign.wording import did_you_mean

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
SETTING_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
OFFSET_RE = re.compile(r"^\s*cutoff\s*(?:([+-])\s*((?:\d+\s*[dhm]\s*)+))?$")
PART_RE = re.compile(r"(\d+)\s*([dhm])")
HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
AUDIENCES = ("affected", "changed", "all", "not_told")
NOTICES = ("affected", "not_told")  # waves that tell the affected before the flip: a `sent` one is a delivered notice
WAVE_AUDIENCE_HELP = ("affected (owns a device still set to `from` when the message goes out), "
                      "changed (had a device switched by this campaign), all (everyone in the audience "
                      "filters who ever had an affected device), not_told (affected, never told by an earlier "
                      "wave, and at an address changed since or added late)")


@dataclass(frozen=True)
class Limits:
    rate_per_second: float = 50.0
    concurrency: int = 8
    max_attempts: int = 6
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0
    pause_on_failure_rate: float = 0.2
    max_message_bytes: int = 1024 * 1024  # a larger message is a render failure of that delivery


@dataclass(frozen=True)
class SendWindow:
    start: dt.time = dt.time(0, 0)
    end: dt.time = dt.time(0, 0)  # equal to start: always open

    @property
    def always_open(self) -> bool:
        return self.start == self.end


@dataclass(frozen=True)
class Apply:
    """`[apply]`: where the setting lives. `local`: this database (the flip writes it directly); `http`: the
    product's settings service, by the contract in docs/apply.md."""

    kind: str = "local"  # local | http
    url: str | None = None
    batch: int = 500
    token_env: str = "CAMPAIGN_APPLY_TOKEN"  # noqa: S105  (the variable's name; the token never comes here)
    timeout_seconds: float = 10.0
    proxy: str | None = None  # an explicit proxy for an https:// url; never one from the environment

    @property
    def http(self) -> bool:
        return self.kind == "http"


@dataclass(frozen=True)
class WaveDef:
    name: str
    at: dt.datetime
    audience: str
    expires: dt.datetime


@dataclass(frozen=True)
class Definition:
    slug: str
    name: str
    sender: str
    template: str
    default_locale: str
    cutoff: dt.datetime
    setting: str
    from_value: str
    to_value: str
    waves: tuple[WaveDef, ...]
    reply_to: str | None = None
    require_notice: bool = True
    min_notice: dt.timedelta | None = None  # fair notice: flip no device sooner than this after its first notice
    countries: tuple[str, ...] = ()
    device_models: tuple[str, ...] = ()
    required_locales: tuple[str, ...] = ()  # locales that must have their own templates (check: missing-translation)
    send_window: SendWindow = field(default_factory=SendWindow)
    limits: Limits = field(default_factory=Limits)
    context: Mapping[str, str] = field(default_factory=dict)  # free values for the templates (URLs, …)
    return_path: str | None = None  # [bounces]: the envelope sender's base, signed per delivery (verp)
    approval_required: bool = False  # `[approval] required`: schedule and flip wait for a second person
    approval_verified: bool = False  # `[approval] verified`: only signed (or console) approvals count
    allowed_signers: str | None = None  # `[approval] allowed_signers`: its absolute path (git's format)
    apply: Apply = field(default_factory=Apply)
    flip: rollout.Rollout = field(default_factory=rollout.Rollout)  # `[flip]`: stages, their wait, their guards
    source: str = ""
    text: str = ""

    def wave(self, name: str) -> WaveDef:
        for w in self.waves:
            if w.name == name:
                return w
        raise KeyError(name)

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def sender_domain(self) -> str:
        """The sender's domain as ASCII (A-labels for an IDN): it goes into every Message-ID."""
        return ascii_domain_form(self.sender_address).rpartition("@")[2].lower()


class _Checker:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.where = Locator(text)
        self.problems: list[Problem] = []

    def fail(self, table: str, key: str | None, message: str, index: int | None = None) -> None:
        label = ".".join(p for p in (table if index is None else f"{table}[{index + 1}]", key) if p)
        self.problems.append(Problem(self.where.line(table, key, index or 0),
                                     f"{label}: {message}" if label else message))

    def take(self, data: dict[str, Any], table: str, allowed: Mapping[str, type | tuple[type, ...]],
             required: tuple[str, ...] = (), index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in required:
            if key not in data:
                self.fail(table, None, f"missing key {key!r}", index)
        for key, value in data.items():
            if key not in allowed:
                self.fail(table, key, f"unknown key{did_you_mean(key, allowed)} (known here: "
                                      f"{', '.join(sorted(allowed))})", index)
                continue
            expected = allowed[key]
            if isinstance(value, bool) and expected is not bool and bool not in (
                    expected if isinstance(expected, tuple) else (expected,)):
                self.fail(table, key, "must not be true/false", index)
                continue
            if not isinstance(value, expected):
                names = expected.__name__ if isinstance(expected, type) else " or ".join(
                    t.__name__ for t in expected)
                self.fail(table, key, f"must be {_kind(names)}, not {_kind(type(value).__name__)}", index)
                continue
            out[key] = value
        return out


def _kind(name: str) -> str:
    return {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
            "list": "a list", "dict": "a table", "datetime": "a date-time"}.get(name, name)


def parse_instant(value: Any) -> dt.datetime:
    """An instant with an offset, from TOML (datetime) or a string; a value without an offset is refused."""
    if isinstance(value, dt.datetime):
        instant = value
    elif isinstance(value, str):
        try:
            instant = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 instant such as 2025-03-28T00:00:00-07:00") \
                from None
    else:
        raise ValueError("must be an instant such as 2025-03-28T00:00:00-07:00")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant.isoformat()} has no UTC offset; write it as e.g. "
                         f"{instant.isoformat()}-07:00 or {instant.isoformat()}Z")
    return instant.astimezone(dt.UTC)


def parse_moment(value: Any, cutoff: dt.datetime) -> dt.datetime:
    """`cutoff`, `cutoff - 14d`, `cutoff + 2h 30m`, or an absolute instant."""
    if isinstance(value, str):
        m = OFFSET_RE.match(value)
        if m:
            sign, parts = m.group(1), m.group(2) or ""
            delta = dt.timedelta()
            for amount, unit in PART_RE.findall(parts):
                delta += {"d": dt.timedelta(days=int(amount)), "h": dt.timedelta(hours=int(amount)),
                          "m": dt.timedelta(minutes=int(amount))}[unit]
            return cutoff - delta if sign == "-" else cutoff + delta
        if value.strip().startswith("cutoff"):
            raise ValueError(f"{value!r}: write `cutoff`, `cutoff - 14d`, `cutoff + 2h` or `cutoff - 1d 12h`")
    return parse_instant(value)


def _time(value: str) -> dt.time:
    m = HHMM_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a time of day HH:MM (24-hour)")
    return dt.time(int(m.group(1)), int(m.group(2)))


def load_definition(path: Path | str, templates: Path | None = None) -> Definition:
    """Read and validate a definition file (the files it names must exist); InputError lists every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(str(path), [Problem(0, f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(str(path), [Problem(line, "not UTF-8 text")]) from None
    return parse_definition(text, str(path), templates, files=True)


def parse_definition(text: str, source: str = "<definition>", templates: Path | None = None, *,
                     files: bool = False) -> Definition:  # a path: relative to `source`'s folder; exists if `files`
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else 0
        raise InputError(source, [Problem(line, f"not valid TOML: {msg}")]) from None

    c = _Checker(source, text)
    top = c.take(data, "", {
        "slug": str, "name": str, "sender": str, "reply_to": str, "template": str, "default_locale": str,
        "cutoff": (str, dt.datetime), "migration": dict, "audience": dict, "send_window": dict,
        "limits": dict, "waves": list, "context": dict, "bounces": dict, "approval": dict, "apply": dict,
        "required_locales": list, "flip": dict,
    }, required=("slug", "name", "sender", "template", "default_locale", "cutoff", "migration", "waves"))

    slug = top.get("slug", "")
    if "slug" in top and not SLUG_RE.match(slug):
        c.fail("", "slug", f"{slug!r} must be lower-case letters, digits and dashes ([a-z0-9-]+)")
    name = top.get("name", "")
    if "name" in top and (not name.strip() or has_crlf(name)):
        c.fail("", "name", "must be a non-empty single line")

    sender = top.get("sender", "")
    if "sender" in top:
        problem = _address_problem(sender)
        if problem:
            c.fail("", "sender", problem)
    reply_to = top.get("reply_to")
    if reply_to is not None:
        problem = _address_problem(reply_to)
        if problem:
            c.fail("", "reply_to", problem)

    template = top.get("template", "")
    if "template" in top:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", template) or ".." in template:
            c.fail("", "template", f"{template!r} must be a folder name under the templates directory")
        elif templates is not None and not (templates / template).is_dir():
            c.fail("", "template", f"no template folder {templates / template} "
                                   "(set CAMPAIGN_TEMPLATES or --templates to the templates directory)")

    default_locale = top.get("default_locale", "")
    if "default_locale" in top:
        try:
            default_locale = normalize_locale(default_locale)
        except ValueError as exc:
            c.fail("", "default_locale", str(exc))

    required_locales: list[str] = []
    for value in top.get("required_locales", []):
        try:
            locale = normalize_locale(value) if isinstance(value, str) else _bad(value)
        except ValueError as exc:
            c.fail("", "required_locales", str(exc))
            continue
        if locale not in required_locales:
            required_locales.append(locale)

    cutoff = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    cutoff_ok = False
    if "cutoff" in top:
        try:
            cutoff = parse_instant(top["cutoff"])
            cutoff_ok = True
        except ValueError as exc:
            c.fail("", "cutoff", str(exc))

    mig = c.take(top.get("migration", {}), "migration",
                 {"setting": str, "from": str, "to": str, "require_notice": bool, "min_notice": str},
                 required=("setting", "from", "to")) if "migration" in top else {}
    for key in ("setting",):
        if key in mig and not SETTING_RE.match(mig[key]):
            c.fail("migration", key, f"{mig[key]!r} must be a setting key ([a-z][a-z0-9_]*)")
    for key in ("from", "to"):
        if key in mig and (not mig[key] or has_crlf(mig[key]) or len(mig[key]) > 128):
            c.fail("migration", key, "must be a non-empty single-line value of at most 128 characters")
    if mig.get("from") is not None and mig.get("from") == mig.get("to"):
        c.fail("migration", "to", "must differ from `from`")
    min_notice = None
    if "min_notice" in mig:
        try:
            min_notice = parse_duration(mig["min_notice"])
        except ValueError as exc:
            c.fail("migration", "min_notice", str(exc))

    aud = c.take(top.get("audience", {}), "audience", {"countries": list, "device_models": list})
    countries: list[str] = []
    for value in aud.get("countries", []):
        try:
            countries.append(normalize_country(value) if isinstance(value, str) else _bad(value))
        except ValueError as exc:
            c.fail("audience", "countries", str(exc))
    models: list[str] = []
    for value in aud.get("device_models", []):
        if not isinstance(value, str) or not value.strip():
            c.fail("audience", "device_models", f"{value!r} must be a model name")
        else:
            models.append(value)

    win = c.take(top.get("send_window", {}), "send_window", {"start": str, "end": str})
    window = SendWindow()
    if win:
        try:
            window = SendWindow(_time(win.get("start", "00:00")), _time(win.get("end", "00:00")))
        except ValueError as exc:
            c.fail("send_window", "start" if "start" in win else "end", str(exc))

    lim = c.take(top.get("limits", {}), "limits", {
        "rate_per_second": (int, float), "concurrency": int, "max_attempts": int,
        "retry_base_seconds": (int, float), "retry_max_seconds": (int, float),
        "pause_on_failure_rate": (int, float), "max_message_bytes": int})
    limits = Limits(**{k: v for k, v in lim.items()})
    for key, ok, rule in (
        ("rate_per_second", limits.rate_per_second > 0, "must be greater than 0"),
        ("concurrency", 1 <= limits.concurrency <= 256, "must be between 1 and 256"),
        ("max_attempts", 1 <= limits.max_attempts <= 100, "must be between 1 and 100"),
        ("retry_base_seconds", limits.retry_base_seconds > 0, "must be greater than 0"),
        ("retry_max_seconds", limits.retry_max_seconds >= limits.retry_base_seconds,
         "must be at least retry_base_seconds"),
        ("pause_on_failure_rate", 0 < limits.pause_on_failure_rate <= 1, "must be above 0 and at most 1"),
        ("max_message_bytes", 4096 <= limits.max_message_bytes <= 100 * 1024 * 1024,
         "must be between 4096 and 104857600 (100 MiB)"),
    ):
        if key in lim and not ok:
            c.fail("limits", key, rule)

    approval = c.take(top.get("approval", {}), "approval", {"required": bool, "verified": bool, "allowed_signers": str},
                      required=("required",)) if "approval" in top else {}
    signers = _allowed_signers(c, approval, Path(source).absolute().parent, files)

    context: dict[str, str] = {}
    for key, value in top.get("context", {}).items():
        if not isinstance(value, str) or has_crlf(value):
            c.fail("context", key, "must be a single-line string")
        elif not re.match(r"^[a-z][a-z0-9_]*$", key):
            c.fail("context", key, "keys must be lower-case names ([a-z][a-z0-9_]*)")
        else:
            context[key] = value

    return_path = _bounces(c, top.get("bounces"))
    apply = _apply(c, top["apply"]) if "apply" in top else Apply()
    flip = rollout.parse(c, top["flip"]) if "flip" in top else rollout.Rollout()

    waves: list[WaveDef] = []
    seen: set[str] = set()
    raw_waves = top.get("waves", [])
    if "waves" in top and not raw_waves:
        c.fail("", "waves", "at least one [[waves]] is needed")
    for i, raw_wave in enumerate(raw_waves):
        if not isinstance(raw_wave, dict):
            c.fail("", "waves", "must be [[waves]] tables")
            continue
        w = c.take(raw_wave, "waves", {"name": str, "at": (str, dt.datetime), "audience": str,
                                       "expires": (str, dt.datetime)},
                   required=("name", "at", "audience"), index=i)
        wname = w.get("name", f"#{i + 1}")
        if "name" in w:
            if not NAME_RE.match(wname):
                c.fail("waves", "name", f"{wname!r} must be a lower-case name ([a-z][a-z0-9_-]*)", i)
            elif wname in seen:
                c.fail("waves", "name", f"{wname!r} is used by an earlier wave", i)
            seen.add(wname)
        audience = w.get("audience", "affected")
        if "audience" in w and audience not in AUDIENCES:
            c.fail("waves", "audience", f"unknown audience rule {audience!r}; use {WAVE_AUDIENCE_HELP}", i)
        if not cutoff_ok or "at" not in w:
            continue
        try:
            at = parse_moment(w["at"], cutoff)
        except ValueError as exc:
            c.fail("waves", "at", str(exc), i)
            continue
        if "expires" in w:
            try:
                expires = parse_moment(w["expires"], cutoff)
            except ValueError as exc:
                c.fail("waves", "expires", str(exc), i)
                continue
        else:
            expires = cutoff if audience in NOTICES else at + dt.timedelta(days=7)
        if expires <= at:
            c.fail("waves", "expires", f"the wave would expire ({expires.isoformat()}) before it starts "
                                       f"({at.isoformat()})", i)
            continue
        if audience in NOTICES and expires > cutoff:
            c.fail("waves", "expires", f"an `{audience}` wave cannot be sent after the cutoff "
                                       "(the setting no longer exists then)", i)
            continue
        if audience == "changed" and at < cutoff:
            c.fail("waves", "at", "a `changed` wave goes to accounts whose devices were switched, so it "
                                  "must come at or after the cutoff", i)
            continue
        waves.append(WaveDef(wname, at, audience, expires))

    if c.problems:
        raise InputError(source, c.problems)
    return Definition(
        slug=slug, name=name, sender=sender, reply_to=reply_to, template=template, countries=tuple(countries),
        default_locale=default_locale, cutoff=cutoff, setting=mig["setting"], from_value=mig["from"],
        to_value=mig["to"], require_notice=mig.get("require_notice", True), min_notice=min_notice,
        required_locales=tuple(required_locales), device_models=tuple(models), send_window=window, limits=limits,
        context=context, return_path=return_path, allowed_signers=signers, apply=apply, flip=flip,
        approval_required=approval.get("required", False), approval_verified=approval.get("verified", False),
        waves=tuple(sorted(waves, key=lambda w: w.at)), source=source, text=text)


def _bounces(c: _Checker, table: dict[str, Any] | None) -> str | None:
    """`[bounces] return_path`: a plain ASCII address whose local part leaves room for `+TOKEN` (verp)."""
    if table is None:
        return None
    b = c.take(table, "bounces", {"return_path": str}, required=("return_path",))
    value = b.get("return_path")
    if value is None:
        return None
    try:
        return parse_return_path(value)
    except ValueError as exc:
        c.fail("bounces", "return_path", str(exc))
        return None


def _allowed_signers(c: _Checker, approval: dict[str, Any], base: Path, files: bool) -> str | None:
    """`[approval] allowed_signers`: the file of the keys whose signatures count (verified = true needs one)."""
    value, verified = approval.get("allowed_signers"), approval.get("verified")
    if value is None or not value.strip() or has_crlf(value):
        if value is not None or verified:
            c.fail("approval", "allowed_signers", f"{'verified = true needs' if value is None else 'must be'} the "
                                                  "path of a file (git's format) naming whose SSH keys may sign")
        return None
    path = base / Path(value).expanduser()
    if files and verified and not path.is_file():
        near = did_you_mean(path.name, (p.name for p in path.parent.glob("*")))  # none when the folder is missing
        c.fail("approval", "allowed_signers", f"no file {path}{near}")
    return str(path)


# -- [apply] ---------------------------------------------------------------------------------------------

APPLY_KINDS = ("local", "http")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_APPLY_BATCH = 10_000
MAX_APPLY_TIMEOUT = 600.0


def _apply(c: _Checker, raw: dict[str, Any]) -> Apply:
    """`[apply]`: kind, and for `http` the service's URL, batch size, token variable, timeout and proxy."""
    a = c.take(raw, "apply", {"kind": str, "url": str, "batch": int, "token_env": str,
                              "timeout_seconds": (int, float), "proxy": str})
    kind = a.get("kind", "local")
    if kind not in APPLY_KINDS:
        c.fail("apply", "kind", f"{kind!r} is not a kind: use \"local\" (this database is where the setting "
                                "lives) or \"http\" (the product's settings service)")
        return Apply()
    if kind == "local":
        for key in ("url", "batch", "token_env", "timeout_seconds", "proxy"):
            if key in a:
                c.fail("apply", key, "goes with kind = \"http\" (kind is \"local\": this database is where the "
                                     "setting lives)")
        return Apply()
    url = a.get("url")
    if url is None:
        if "url" not in raw:
            c.fail("apply", "kind", "kind = \"http\" needs `url`, the settings service's batch endpoint")
    else:
        problem = _apply_url_problem(url)
        if problem:
            c.fail("apply", "url", problem)
    batch = a.get("batch", Apply.batch)
    if not 1 <= batch <= MAX_APPLY_BATCH:
        c.fail("apply", "batch", f"must be between 1 and {MAX_APPLY_BATCH}")
    token_env = a.get("token_env", Apply.token_env)
    if not ENV_NAME_RE.match(token_env):
        c.fail("apply", "token_env", f"{token_env!r} must be the name of an environment variable "
                                     "(the token itself never goes into the definition)")
    timeout = float(a.get("timeout_seconds", Apply.timeout_seconds))
    if not 0 < timeout <= MAX_APPLY_TIMEOUT:
        c.fail("apply", "timeout_seconds", f"must be above 0 and at most {MAX_APPLY_TIMEOUT:g}")
    proxy = a.get("proxy")
    if proxy is not None:
        problem = _apply_proxy_problem(proxy, url)
        if problem:
            c.fail("apply", "proxy", problem)
    return Apply(kind, url, batch, token_env, timeout, proxy)


def _apply_url_problem(url: str) -> str | None:
    """None when `url` is an https:// URL, or http:// to a loopback host; else what is wrong."""
    return urls.endpoint_problem(url, "the bearer token comes from the variable named by token_env")


def _apply_proxy_problem(proxy: str, url: str | None) -> str | None:
    """None when `proxy` is an http:// or https:// proxy URL for an https:// `url`; else what is wrong. Through
    a proxy the request goes inside TLS (CONNECT), so the proxy never sees the token; a plain http:// url would
    hand it the token, so it is refused."""
    if url is not None and not url.lower().startswith("https://"):
        return (f"goes only with an https:// url (url is {url!r}: through a proxy, plain http:// would hand it "
                "the bearer token)")
    parts = urls.web_parts(proxy, f"{proxy!r} must be an http:// or https:// proxy URL such as 'http://proxy.internal:3128'",
                     "the definition holds no secret")
    if isinstance(parts, str):
        return parts
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{proxy!r} must be the proxy's address alone (scheme, host and port), without a path"
    return None


def _bad(value: Any) -> str:
    raise ValueError(f"{value!r} must be a string")


def _address_problem(value: str) -> str | None:
    if has_crlf(value):
        return "must be a single line"
    _display, address = parseaddr(value)
    if not address:
        return f"{value!r} is not an address such as 'Device Privacy <privacy@example.com>'"
    try:
        normalize_address(address)
    except ValueError as exc:
        return str(exc)
    return None
