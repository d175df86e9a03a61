"""The preflight: the mistakes people make with a campaign, found before anyone is mailed (`campaign check`).

Each finding has a stable code (docs/commands.md lists them) and is an error or a warning depending on the
verb that asks: an audience of nobody is an error before `schedule` and a warning at `create`; a secret missing
here is an error for `check` and `send --dry-run`, a warning for `create` and `schedule`, which may run on a host
other than the one that sends. The checks read the database and the templates; they write nothing.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db, verp, versions, webhook_config
from campaign.definition import SLUG_RE, Definition, WaveDef, load_definition, parse_definition
from campaign.errors import ConfigError, NotFound, PreflightFailed, TemplateProblem
from campaign.notices import kept, proofs
from campaign.notices.rendering import PARTS, Renderer, language, same_language
from campaign.store import audience, audit, steps
from campaign.store import campaigns as campaign_rows
from campaign.store import evidence as evidence_rows
from campaign.wording import did_you_mean, duration

ERROR, WARNING = "error", "warning"
# Who asks: `campaign check`, and the verbs that run the preflight before they act.
CHECK, CREATE, SCHEDULE, SEND, SCHEDULER = "check", "create", "schedule", "send", "scheduler"

# The codes, each with the verbs for which it is only a warning (an error for the others).
CODES: Mapping[str, frozenset[str]] = {
    "unknown-setting": frozenset(),
    "unknown-value": frozenset(),
    "empty-audience": frozenset({CREATE}),
    "missing-secret": frozenset({CREATE, SCHEDULE}),
    "missing-templates": frozenset(),
    "template-error": frozenset(),
    "fallback": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),
    "missing-translation": frozenset(),
    "notice-too-late": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),
    "wave-too-long": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),
    "cutoff-moved": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),
    "templates-changed": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),
    "smtp-unreachable": frozenset(),
    "smtp-auth": frozenset(),
    "webhook-secret": frozenset({CHECK, CREATE, SCHEDULE, SEND, SCHEDULER}),  # stops that endpoint's posts only
}


@dataclass(frozen=True)
class Finding:
    """One thing the preflight found: a stable code, what is wrong in words, and the facts behind it."""

    code: str
    message: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.facts}


@dataclass(frozen=True)
class Preflight:
    """What the preflight found for one campaign, sorted into errors and warnings for the verb that asked."""

    campaign: str
    asked_by: str
    errors: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    rendered: int = 0  # sample messages rendered without error (one per wave × locale of the audience)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "errors": [f.as_json() for f in self.errors],
                "warnings": [f.as_json() for f in self.warnings]}

    def lines(self) -> list[str]:
        """The findings as lines for a person: errors first."""
        return ([f"error [{f.code}]: {f.message}" for f in self.errors]
                + [f"warning [{f.code}]: {f.message}" for f in self.warnings])


def check(engine: Engine, templates: Path, target: str, asked_by: str = CHECK,
          extra: Iterable[Finding] = (), wave: str | None = None) -> Preflight:
    """`campaign check SLUG|FILE`: the preflight of a registered campaign (its frozen definition) or of a
    definition file not registered yet. `wave`: the wave about to be sent (`send --dry-run`), for which only
    what concerns it is checked (a `changed` wave's audience is not who holds the old value)."""
    with db.read(engine) as conn:
        row = campaign_rows.row(conn, target) if SLUG_RE.match(target) else None
        if row is not None:
            d = parse_definition(row["definition"], row["source"])
        elif Path(target).is_file():
            d = load_definition(Path(target), templates)
        else:
            known = campaign_rows.slugs(conn)
            raise NotFound(f"{target!r} is neither a campaign (known: {', '.join(known) or 'none yet'}) nor a "
                           "definition file")
        try:
            # A registered campaign is checked as it will be sent: from its version's kept templates.
            renderer = (kept.sending(conn, int(row["id"]), d, templates).renderer(d, templates) if row is not None
                        else Renderer(d, templates))
        except TemplateProblem as exc:
            return sort(d.slug, [Finding("missing-templates", str(exc)), *extra], asked_by)
        return run(conn, d, renderer, asked_by, extra, wave)


def connect_findings(problem: str | None, detail: str, relay: str) -> list[Finding]:
    """smtp-unreachable / smtp-auth, from `campaign check --connect`'s session with the relay (`problem`: None
    when it worked, "login" when the relay did not take the login, anything else when there was no session)."""
    if problem is None:
        return []
    return [Finding("smtp-auth" if problem == "login" else "smtp-unreachable", detail, {"relay": relay})]


def refuse_on_errors(result: Preflight) -> Preflight:
    """`result`, or PreflightFailed naming its errors (for the verbs that must not go on)."""
    if result.errors:
        raise PreflightFailed(f"{result.campaign}: the preflight found {len(result.errors)} error(s):\n  "
                              + "\n  ".join(result.lines()))
    return result


def sort(campaign: str, findings: Iterable[Finding], asked_by: str, rendered: int = 0) -> Preflight:
    errors: list[Finding] = []
    warnings: list[Finding] = []
    for f in findings:
        (warnings if asked_by in CODES[f.code] else errors).append(f)
    return Preflight(campaign, asked_by, tuple(errors), tuple(warnings), rendered)


def _flip_began(conn: Connection, d: Definition) -> bool:
    row = campaign_rows.row(conn, d.slug)
    return row is not None and (campaign_rows.has_changes(conn, int(row["id"]))
                                or steps.flip_ran(conn, int(row["id"])))


def run(conn: Connection, d: Definition, renderer: Renderer, asked_by: str = CHECK,
        extra: Iterable[Finding] = (), wave: str | None = None) -> Preflight:
    """Every check that needs no network, for the verb `asked_by` (secrets are looked for in this process's
    environment); `extra` adds findings made elsewhere (the SMTP check of `--connect`).

    Who holds the old value now is the audience only until the flip: once it has begun (or for a `changed`
    wave), those people were switched, not lost, and the audience and notice-timing checks no longer apply."""
    findings: list[Finding] = []
    before_flip = not _flip_began(conn, d) and (wave is None or d.wave(wave).audience != "changed")
    accounts = audience.summary(conn, d).accounts if before_flip else 0  # read once for audience and timing
    if before_flip:
        findings += audience_findings(conn, d, accounts)
    findings += secret_findings(d)
    template_problems = template_findings(d, renderer)
    findings += template_problems
    rendered = 0
    if not template_problems:
        findings += locale_findings(conn, d, renderer)
        problem, rendered = render_findings(conn, d, renderer)
        findings += problem
    if before_flip:
        findings += timing_findings(d, accounts)
    findings += moved_findings(conn, d)
    findings += drift_findings(conn, d, renderer)
    findings += extra
    return sort(d.slug, findings, asked_by, rendered)


# -- the audience -------------------------------------------------------------------------------------


def _counted(values: Mapping[str, int], limit: int = 8) -> str:
    shown = ", ".join(f"`{k}` ({n:,} device{'s' if n != 1 else ''})" for k, n in list(values.items())[:limit])
    more = len(values) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def audience_findings(conn: Connection, d: Definition, accounts: int) -> list[Finding]:
    """unknown-setting, unknown-value, empty-audience (`accounts`: those affected now)."""
    keys = audience.setting_keys(conn)
    if d.setting not in keys:
        if not keys:  # nothing imported yet: nobody to reach, and no setting to compare the name with
            return [Finding("empty-audience", f"no devices are imported yet, so the campaign reaches nobody "
                                              f"(import devices, then run `campaign check {d.slug}`)",
                            {"devices_with_value": 0})]
        by_count = dict(sorted(keys.items(), key=lambda kv: (-kv[1], kv[0])))
        return [Finding("unknown-setting",
                        f"no imported device has the setting `{d.setting}`; the devices have {_counted(by_count)}"
                        f"{did_you_mean(d.setting, keys)}",
                        {"setting": d.setting, "known": by_count})]
    values = audience.setting_values(conn, d.setting)
    if d.from_value not in values:
        return [Finding("unknown-value",
                        f"no device holds `{d.setting}` = `{d.from_value}`; the devices hold {_counted(values)}"
                        f"{did_you_mean(d.from_value, values)}",
                        {"setting": d.setting, "value": d.from_value, "known": values})]
    if accounts == 0:
        filters = "; ".join(x for x in (
            f"countries {', '.join(d.countries)}" if d.countries else "",
            f"device models {', '.join(d.device_models)}" if d.device_models else "") if x)
        return [Finding("empty-audience",
                        f"{values[d.from_value]:,} device(s) hold `{d.setting}` = `{d.from_value}`, but the audience "
                        f"filters ({filters}) leave nobody: the campaign would tell no one",
                        {"devices_with_value": values[d.from_value]})]
    return []


def webhook_findings(endpoints: Iterable[webhook_config.Endpoint]) -> list[Finding]:
    """webhook-secret: a `[[webhooks]]` endpoint of campaign.toml whose signing secret is not set or not one (its
    events wait, undelivered, until it is); the value never shown."""
    out = []
    for e in endpoints:
        if e.secret_env is None:
            continue
        try:
            webhook_config.secret(e)
        except ConfigError as exc:
            out.append(Finding("webhook-secret", str(exc), {"endpoint": e.name, "variable": e.secret_env}))
    return out


# -- secrets ------------------------------------------------------------------------------------------


def secret_findings(d: Definition) -> list[Finding]:
    """missing-secret: the bounce key for signed return paths, the settings service's token."""
    out = []
    if d.return_path is not None:
        try:
            verp.keys("[bounces] signs each message's return path")
        except ConfigError as exc:
            out.append(Finding("missing-secret", str(exc), {"variable": verp.KEY_ENV}))
    if d.apply.kind == "http" and not os.environ.get(d.apply.token_env, "").strip():
        out.append(Finding("missing-secret",
                           f"{d.apply.token_env} is not set: [apply] kind = \"http\" sends the settings service this "
                           "bearer token (set it in the environment of the process that flips)",
                           {"variable": d.apply.token_env}))
    return out


# -- templates and locales ----------------------------------------------------------------------------


def _files(renderer: Renderer, locale: str, wave: str) -> list[str]:
    return [f"{locale}/{wave}.{part}.j2" for part in PARTS]


def template_findings(d: Definition, renderer: Renderer) -> list[Finding]:
    """missing-templates: the default locale lacks a wave's templates, or a locale has some parts of a wave's
    message and not the others."""
    out = []
    for wave in d.waves:
        for locale in [d.default_locale] + [x for x in renderer.available_locales() if x != d.default_locale]:
            files = _files(renderer, locale, wave.name)
            missing = [f for f in files if not renderer.exists(f)]
            if locale == d.default_locale and missing:
                out.append(Finding("missing-templates",
                                   f"no template for `{locale}` / `{wave.name}` (looked for "
                                   f"{', '.join(str(renderer.root / f) for f in missing)}): the default locale "
                                   "must have every wave's message", {"wave": wave.name, "locale": locale,
                                                                      "missing": missing}))
            elif missing and len(missing) < len(files):
                out.append(Finding("missing-templates",
                                   f"`{locale}` / `{wave.name}` is incomplete: no {', '.join(missing)} (looked in "
                                   f"{renderer.root / locale})", {"wave": wave.name, "locale": locale,
                                                                  "missing": missing}))
    return out


def _told(wave: WaveDef) -> bool:
    """Whether a wave goes to the affected people (before the flip)."""
    return wave.audience in ("affected", "all", "not_told")


def locale_findings(conn: Connection, d: Definition, renderer: Renderer) -> list[Finding]:
    """fallback (a locale of the audience served by another language's templates) and missing-translation (a
    required locale that would be)."""
    out = []
    present = audience.locales(conn, d)
    for wave in d.waves:
        by_folder: dict[str, list[tuple[str, int]]] = {}
        for locale, accounts, _first in present:
            folder = renderer.template_locale(wave.name, locale)
            if not same_language(locale, folder):
                by_folder.setdefault(folder, []).append((locale, accounts))
        for folder, served in by_folder.items():
            for locale, accounts in served:
                out.append(Finding("fallback",
                                   f"wave `{wave.name}`: {accounts:,} account(s) in {locale} get the {folder} message "
                                   f"(no {locale}/ or {language(locale)}/{wave.name}.subject.j2)",
                                   {"wave": wave.name, "locale": locale, "template_locale": folder,
                                    "accounts": accounts}))
        for locale in d.required_locales:
            folder = renderer.template_locale(wave.name, locale)
            if not same_language(locale, folder):
                out.append(Finding("missing-translation",
                                   f"wave `{wave.name}`: {locale} is a required locale, but has no template "
                                   f"(looked for {renderer.root / locale}/ and {renderer.root / language(locale)}/"
                                   f"{wave.name}.subject.j2; it would get {folder})",
                                   {"wave": wave.name, "locale": locale, "template_locale": folder}))
    return out


def render_findings(conn: Connection, d: Definition, renderer: Renderer) -> tuple[list[Finding], int]:
    """template-error: a sample of every wave × locale of the audience does not render. Also how many did."""
    try:
        return [], proofs.check_campaign(conn, d, renderer)
    except TemplateProblem as exc:
        return [Finding("template-error", str(exc))], 0


# -- time ---------------------------------------------------------------------------------------------


def _open_share(d: Definition) -> float:
    """The share of a day the send window is open (1.0 when it always is)."""
    w = d.send_window
    start = w.start.hour * 60 + w.start.minute
    end = w.end.hour * 60 + w.end.minute
    minutes = (end - start) % (24 * 60) or 24 * 60
    return minutes / (24 * 60)


def timing_findings(d: Definition, accounts: int) -> list[Finding]:
    """notice-too-late (the first wave that tells the affected people, plus min_notice, after the cutoff: later
    waves remind those it told) and wave-too-long (the audience at the rate limit, within the send window, does
    not fit before the wave expires)."""
    out = []
    min_notice = d.min_notice or dt.timedelta(0)
    share = _open_share(d)
    told = [w for w in d.waves if _told(w)]
    if told and told[0].at + min_notice > d.cutoff:
        wave = told[0]
        late = (wave.at + min_notice - d.cutoff).total_seconds()
        out.append(Finding("notice-too-late",
                           f"wave `{wave.name}`, the first to tell the affected people, goes out "
                           f"{wave.at.isoformat()}: "
                           + (f"with min_notice {duration(min_notice.total_seconds())}, " if min_notice else "")
                           + f"that is {duration(late)} too late for the cutoff {d.cutoff.isoformat()}: those it "
                           "tells are switched late" + (" (fair notice holds them back)" if min_notice else ""),
                           {"wave": wave.name, "late_seconds": late}))
    for wave in told:
        need = accounts / d.limits.rate_per_second
        have = (wave.expires - wave.at).total_seconds() * share
        if accounts and need > have:
            out.append(Finding("wave-too-long",
                               f"wave `{wave.name}`: {accounts:,} message(s) at {d.limits.rate_per_second:g}/s need "
                               f"{duration(need)} of sending; between {wave.at.isoformat()} and its expiry "
                               f"{wave.expires.isoformat()} the send window is open about {duration(have)}",
                               {"wave": wave.name, "messages": accounts, "seconds_needed": round(need, 1),
                                "seconds_open": round(have, 1)}))
    return out


def moved_findings(conn: Connection, d: Definition) -> list[Finding]:
    """cutoff-moved: notices went out telling another cutoff than the definition's (it was moved since). A wave's
    messages told the cutoff of the definition in force when it was first sent (the audit events, in order)."""
    row = campaign_rows.row(conn, d.slug)
    if row is None:
        return []
    in_force: str | None = None
    told_at: dict[str, str | None] = {}
    for action, detail in audit.in_order(conn, int(row["id"]), ("campaign.create", "campaign.replace", "wave.send")):
        if action == "wave.send":
            told_at.setdefault(str(detail.get("wave")), in_force)
        else:
            in_force = detail.get("cutoff")
    told: dict[str, int] = {}
    for wave, accounts in evidence_rows.told_by_wave(conn, int(row["id"])).items():
        cutoff = told_at.get(wave)
        if cutoff and dt.datetime.fromisoformat(cutoff) != d.cutoff:
            told[cutoff] = told.get(cutoff, 0) + accounts
    if not told:
        return []
    accounts = sum(told.values())
    return [Finding("cutoff-moved",
                    f"{accounts:,} message(s) told another cutoff ({', '.join(told)}) than the definition's "
                    f"{d.cutoff.isoformat()}: the definition needs a wave, not sent yet, that tells them the new date",
                    {"accounts": accounts, "told": told})]


def drift_findings(conn: Connection, d: Definition, renderer: Renderer) -> list[Finding]:
    """templates-changed: the template folder was edited after this version of the definition was created (and
    approved). Those edits are not sent (messages are built from the version as kept): say so, before someone
    expects them in people's mail."""
    row = campaign_rows.row(conn, d.slug)
    if row is None:
        return []
    try:
        version, changed = versions.drift(conn, int(row["id"]), d, renderer.root.parent)
    except TemplateProblem as exc:
        return [Finding("templates-changed", str(exc))]
    if not changed:
        return []
    files = [f"{f.path.removeprefix('templates/')} ({f.status})" for f in changed]
    shown = ", ".join(files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
    return [Finding("templates-changed",
                    f"the templates were edited after version {version} of the definition was created: {shown}; "
                    f"these edits are NOT sent: messages are built from version {version} as it was kept (`campaign "
                    f"create --replace` makes the edits a new version, to be approved again)",
                    {"version": version, "files": [f.path for f in changed]})]


# -- the scheduler's watch ----------------------------------------------------------------------------

FAILED, PASSED = "preflight.failed", "preflight.passed"


def last_word(conn: Connection, campaign_id: int) -> audit.Event | None:
    """The campaign's latest preflight event of the scheduler (failed or passed again), if any."""
    last = None
    for event in audit.events(conn, campaign_id, actions=(FAILED, PASSED)):
        last = event
    return last


def watch(engine: Engine, templates: Path, actor: str, slugs: Iterable[str]) -> list[Preflight]:
    """The scheduler's preflight of each campaign in `slugs` (those scheduled): the result of each, and an audit
    event when what it finds changes — `preflight.failed` with the errors, or `preflight.passed` once they are
    gone — so that `status` and the log say days ahead what would fail on the day, without an event a poll."""
    out = []
    for slug in slugs:
        result = check(engine, templates, slug, SCHEDULER)
        said = [f.as_json() for f in result.errors]
        with db.read(engine) as conn:
            row = campaign_rows.row(conn, slug)
            last = last_word(conn, int(row["id"])) if row is not None else None
        if row is None:
            continue
        if said and (last is None or last.action != FAILED or last.detail.get("errors") != said):
            action: str | None = FAILED
        elif not said and last is not None and last.action == FAILED:
            action = PASSED
        else:
            action = None  # nothing changed: no write, no lock taken
        if action is not None:
            with db.transaction(engine, actor, action, campaign_id=int(row["id"])) as tx:
                if said:
                    tx.note(errors=said)
        out.append(result)
    return out
