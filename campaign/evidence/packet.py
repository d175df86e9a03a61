"""The review packet an approver signs off (`GET /campaigns/{slug}/review`): the audience by locale, country and
device model; the timeline; every wave × locale message as it would be sent, rendered for a made-up person (never
a customer: the packet is shared for review); which template serves each locale and where a language falls back
to another; the preflight's findings; what changed in the definition and each template since the version last
approved (`campaign.versions`); and the digest being approved. Each part is a core call of its own
(`audience`, `check`, the approval's standing); this module only gathers them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from campaign import campaigns, db, preflight, versions
from campaign.cutoff import approval
from campaign.definition import Definition, WaveDef
from campaign.errors import NotFound, TemplateProblem, UsageError
from campaign.notices import kept, standins
from campaign.notices.rendering import Rendered, Renderer, same_language
from campaign.recipients import DeviceView, Recipient
from campaign.store import audience
from campaign.validation import normalize_locale

BY = ("locale", "country", "model")


@dataclass(frozen=True)
class Message:
    """One wave × locale as it would be sent, for the stand-in; `fallback` says when another language serves it."""

    wave: str
    locale: str
    accounts: int  # of the audience now, in this locale
    template_locale: str | None
    fallback: str | None
    subject: str | None
    text: str | None
    problem: str | None  # the template does not render (the preflight says the same)


@dataclass(frozen=True)
class Packet:
    campaign: str
    name: str
    state: str
    setting: str
    from_value: str
    to_value: str
    cutoff: dt.datetime
    waves: tuple[WaveDef, ...]
    accounts: int
    devices: int
    by: dict[str, dict[str, dict[str, int]]]  # locale|country|model -> value -> {accounts, devices}
    locales: tuple[str, ...]
    messages: tuple[Message, ...]
    preflight: preflight.Preflight
    standing: approval.Standing
    changes: versions.Changes  # the definition and each template since the version last approved


def _stand_in(d: Definition, locale: str, models: list[str]) -> tuple[Recipient, list[DeviceView]]:
    """The made-up person of `locale` the gallery shows too (`notices.standins`), with the audience's models."""
    return standins.stand_in(locale, models or list(d.device_models))


def _fallback(locale: str, template: str) -> str | None:
    if same_language(locale, template):
        return None  # de-AT served by de speaks its language
    return f"no {locale} template: readers of {locale} get the {template} message"


def _message(renderer: Renderer, d: Definition, wave: WaveDef, locale: str, accounts: int,
             models: list[str]) -> Message:
    recipient, devices = _stand_in(d, locale, models)
    try:
        r = renderer.render(wave, recipient, devices)
    except TemplateProblem as exc:
        return Message(wave.name, locale, accounts, None, None, None, None, str(exc))
    return Message(wave.name, locale, accounts, r.template_locale, _fallback(locale, r.template_locale), r.subject,
                   r.text, None)


def packet(engine: Engine, templates: Path, slug: str) -> Packet:
    """The review packet of the campaign's current definition."""
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        d = c.definition
        summaries = {key: audience.summary(conn, d, by=key) for key in BY}  # each counts the whole audience too
        by = {key: s.by or {} for key, s in summaries.items()}
        overall = summaries["locale"]
        standing = approval.standing(conn, c)
        changes = versions.since_approved(conn, c.id)
        try:  # the words that will be sent: the version's kept templates, not the folder as edited since
            renderer: Renderer | TemplateProblem = kept.sending(conn, c.id, d, templates).renderer(d, templates)
        except TemplateProblem as exc:
            renderer = exc
    found = preflight.check(engine, templates, slug)
    locale_counts = {loc: v["accounts"] for loc, v in by["locale"].items()}
    locales = tuple(sorted({*locale_counts, *d.required_locales, d.default_locale}))
    models = [m for m, _ in sorted(by["model"].items(), key=lambda kv: -kv[1]["devices"]) if m]
    messages: list[Message] = []
    if isinstance(renderer, TemplateProblem):
        messages = [Message(w.name, loc, locale_counts.get(loc, 0), None, None, None, None, str(renderer))
                    for w in d.waves for loc in locales]
    else:
        messages = [_message(renderer, d, w, loc, locale_counts.get(loc, 0), models)
                    for w in d.waves for loc in locales]
    return Packet(slug, c.name, c.state, d.setting, d.from_value, d.to_value, d.cutoff, tuple(d.waves),
                  overall.accounts, overall.devices, by, locales, tuple(messages), found, standing, changes)


def message(engine: Engine, templates: Path, slug: str, wave: str, locale: str) -> Rendered:
    """One wave × locale rendered for the stand-in (the packet's link to a message's HTML)."""
    try:
        locale = normalize_locale(locale)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        d = c.definition
        models = [m for m in (audience.summary(conn, d, by="model").by or {}) if m]
        renderer = kept.sending(conn, c.id, d, templates).renderer(d, templates)
    try:
        w = d.wave(wave)
    except KeyError:
        raise NotFound(f"no wave {wave!r} in {slug} (waves: {', '.join(x.name for x in d.waves)})") from None
    recipient, devices = _stand_in(d, locale, models)
    return renderer.render(w, recipient, devices)
