"""Messages rendered to prove they build, before anyone is mailed: a sample per wave × locale of the audience (the
render check at `create`, the previews and the gallery show them), and every recipient's message of a wave (the
pass `schedule` runs). A failure names the template file and line, and the account. No ledger row is written."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection

from campaign import db
from campaign.definition import Definition, WaveDef
from campaign.errors import NotFound, RenderFailure, TemplateProblem, UsageError
from campaign.notices import standins
from campaign.notices.mime import HeaderInjection, MessageBuilder, MessageTooLarge, Parts, message_id
from campaign.notices.rendering import Rendered, Renderer
from campaign.recipients import DeviceView, Recipient
from campaign.store import audience

TEST_PREFIX = "[TEST] "


@dataclass(frozen=True)
class Sample:
    """One message of a wave as it would be sent to one recipient."""

    wave: str
    locale: str  # the recipient's locale
    recipients: int  # how many accounts of the audience have this locale (0: none, a stand-in shows it)
    recipient: Recipient
    devices: tuple[DeviceView, ...]
    rendered: Rendered
    message: bytes
    stand_in: bool = False  # rendered for a made-up person (`campaign.notices.standins`), not an account


def builder_for(definition: Definition, wave: WaveDef, test: bool = False) -> MessageBuilder:
    extra = {"X-Campaign": definition.slug, "X-Campaign-Wave": wave.name}
    if test:
        extra["X-Campaign-Test"] = "yes"
    return MessageBuilder(definition.sender, definition.reply_to, extra_headers=extra,
                          boundary_seed=f"{definition.slug}/{wave.name}",
                          max_bytes=definition.limits.max_message_bytes)


def models(conn: Connection, d: Definition) -> list[str]:
    """The device models a stand-in's devices show: the audience's, the commonest first, else the definition's
    (models are nobody's personal data, and real ones make the message read as it will)."""
    by = audience.summary(conn, d, by="model").by or {}
    return sorted(by, key=lambda m: (-by[m]["devices"], m)) or list(d.device_models)


def _affected(conn: Connection, d: Definition, account_ids: list[str] | None = None
              ) -> Iterator[tuple[Recipient, list[DeviceView]]]:
    return audience.iter_affected(conn, d, account_ids=account_ids)


def _build(renderer: Renderer, d: Definition, wave: WaveDef, recipient: Recipient, devices: list[DeviceView],
           recipients: int, test: bool = False, to: str | None = None, stand_in: bool = False) -> Sample:
    try:
        rendered = renderer.render(wave, recipient, devices)
        subject = TEST_PREFIX + rendered.subject if test else rendered.subject
        address = to or recipient.email
        mid = message_id(d.slug, wave.name, recipient.account_id, d.sender_domain) if not test else \
            message_id(d.slug, f"{wave.name}-test", f"{recipient.locale}/{address}/{db.utcnow().isoformat()}",
                       d.sender_domain)
        parts = Parts(recipient.name, address, subject, rendered.text, rendered.html, mid, db.utcnow())
        data = builder_for(d, wave, test).build(parts)
    except (RenderFailure, MessageTooLarge, HeaderInjection) as exc:
        # One person's data: say whose (a stand-in is nobody's).
        who = "" if stand_in else f"account {recipient.account_id}: "
        raise RenderFailure(f"{who}{exc}") from None
    return Sample(wave.name, recipient.locale, recipients, recipient, tuple(devices), rendered, data, stand_in)


def samples(conn: Connection, d: Definition, renderer: Renderer, waves: list[WaveDef] | None = None,
            locale: str | None = None, test: bool = False, to: str | None = None, real: bool = False
            ) -> Iterator[Sample]:
    """One message per wave × locale of the audience now, each for that locale's stand-in (`campaign.notices.
    standins`: made up, for material people share) or, with `real`, for a real account of it (the first by id).
    With `locale` given and nobody of it in the audience, its stand-in is used either way."""
    found = audience.locales(conn, d)
    if locale is not None:
        found = [f for f in found if f[0] == locale] or [(locale, 0, "")]
    shown: list[str] | None = None  # read when a stand-in first needs them
    for wave in waves if waves is not None else list(d.waves):
        for loc, count, first in found:
            made_up = not (count and real)
            if made_up:
                shown = models(conn, d) if shown is None else shown
                recipient, devices = standins.stand_in(loc, shown)
            else:
                recipient, devices = next(_affected(conn, d, account_ids=[first]))
            yield _build(renderer, d, wave, recipient, devices, count, test=test, to=to, stand_in=made_up)


def check_campaign(conn: Connection, d: Definition, renderer: Renderer) -> int:
    """Render every wave × locale of the audience for a real account of it (real data must render), and the
    default locale's messages for its stand-in when nobody of it is in the audience (every locale without
    templates falls back to them): raises TemplateProblem naming the template file and line. Returns how many
    messages were rendered — as many as the gallery writes when the default locale is in the audience."""
    n = 0
    for wave in d.waves:
        renderer.template_locale(wave.name, d.default_locale)  # the fallback must exist for every wave
    in_audience = False
    for s in samples(conn, d, renderer, real=True):
        in_audience = in_audience or s.locale == d.default_locale
        n += 1
    if not in_audience:
        for _ in samples(conn, d, renderer, locale=d.default_locale):
            n += 1
    return n


def preview_one(conn: Connection, d: Definition, renderer: Renderer, wave: WaveDef, locale: str | None,
                account_id: str | None) -> Sample:
    if account_id is not None:
        recipient = audience.recipient(conn, account_id)
        if recipient is None:
            raise NotFound(f"no account {account_id!r}")
        found = list(_affected(conn, d, account_ids=[account_id]))
        if not found:
            raise UsageError(f"account {account_id!r} has no device with {d.setting} = {d.from_value} "
                             "in this campaign's audience")
        recipient, devices = found[0]
        return _build(renderer, d, wave, recipient, devices, 1)
    return next(samples(conn, d, renderer, waves=[wave], locale=locale or d.default_locale))


def _prove(renderer: Renderer, d: Definition, wave: WaveDef, builder: MessageBuilder, recipient: Recipient,
           devices: list[DeviceView], now: dt.datetime) -> None:
    """Render and build one recipient's message of `wave` as the send will (G5); raises what would stop it."""
    rendered = renderer.render(wave, recipient, devices)
    builder.build(Parts(recipient.name, recipient.email, rendered.subject, rendered.text, rendered.html,
                        message_id(d.slug, wave.name, recipient.account_id, d.sender_domain), now))


FAILURES = (TemplateProblem, ValueError, HeaderInjection)  # what one person's message can fail with (RenderFailure,
# MessageTooLarge among them); anything else is a fault of the run, not of a message


@dataclass
class Tally:
    """One wave's messages over a share of the audience: how many built, how many failed, the first problems
    (`account: problem`, in account order). Picklable: a render process sends it back."""

    wave: str
    rendered: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)


def render_waves(conn: Connection, d: Definition, renderer: Renderer, after: str | None = None,
                 upto: str | None = None, limit_errors: int = 20,
                 tick: Callable[[int], None] | None = None, every: int = 500) -> list[Tally]:
    """Every wave for every recipient in the audience now whose account id is in (`after`, `upto`] (None: no
    bound), the audience read once for all the waves (for `schedule`, G5). `tick(n)` is told of every `every`
    messages or so, and of the rest at the end."""
    waves = list(d.waves)
    builders = [builder_for(d, w) for w in waves]
    tallies = [Tally(w.name) for w in waves]
    now = db.utcnow()
    pending = 0
    for recipient, devices in audience.iter_affected(conn, d, after=after, upto=upto):
        for wave, builder, tally in zip(waves, builders, tallies, strict=True):
            try:
                _prove(renderer, d, wave, builder, recipient, devices, now)
                tally.rendered += 1
            except FAILURES as exc:
                tally.failed += 1
                if len(tally.problems) < limit_errors:
                    tally.problems.append(f"account {recipient.account_id}: {exc}")
        pending += len(waves)
        if tick is not None and pending >= every:
            tick(pending)
            pending = 0
    if tick is not None and pending:
        tick(pending)
    return tallies
