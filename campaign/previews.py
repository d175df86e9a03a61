"""What a campaign's messages will look like: the render check at `create`, previews, the gallery,
and the render-everyone pass that `schedule` runs. No ledger row is written here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from campaign import db, outfiles, pages
from campaign.addresses import normalize as normalize_address
from campaign.config import Config
from campaign.definition import Definition, WaveDef
from campaign.errors import NotFound, RenderFailure, TemplateProblem, UsageError
from campaign.mime import HeaderInjection, MessageBuilder, MessageTooLarge, Parts, message_id
from campaign.rendering import DeviceView, Recipient, Rendered, Renderer
from campaign.store import audience
from campaign.transport import Envelope, RecordingTransport, Transport, make_transport, send_all_sync
from campaign.validation import normalize_locale

TEST_PREFIX = "[TEST] "


@dataclass(frozen=True)
class Sample:
    """One message of a wave as it would be sent to one recipient."""

    wave: str
    locale: str  # the recipient's locale
    recipients: int  # how many accounts of the audience have this locale (0 for a stand-in)
    recipient: Recipient
    devices: tuple[DeviceView, ...]
    rendered: Rendered
    message: bytes


STAND_IN = "preview"  # the account id of the stand-in a preview renders for when nobody of a locale is affected


def builder_for(definition: Definition, wave: WaveDef, test: bool = False) -> MessageBuilder:
    extra = {"X-Campaign": definition.slug, "X-Campaign-Wave": wave.name}
    if test:
        extra["X-Campaign-Test"] = "yes"
    return MessageBuilder(definition.sender, definition.reply_to, extra_headers=extra,
                          boundary_seed=f"{definition.slug}/{wave.name}",
                          max_bytes=definition.limits.max_message_bytes)


def _stand_in(definition: Definition, locale: str) -> tuple[Recipient, list[DeviceView]]:
    model = definition.device_models[0] if definition.device_models else "Smart speaker"
    return (Recipient(STAND_IN, "preview@example.com", "Alex Example", locale, "UTC"),
            [DeviceView("preview-1", "Kitchen", model)])


def _affected(conn: Connection, d: Definition, account_ids: list[str] | None = None
              ) -> Iterator[tuple[Recipient, list[DeviceView]]]:
    return audience.iter_affected(conn, d, account_ids=account_ids)


def _build(renderer: Renderer, d: Definition, wave: WaveDef, recipient: Recipient, devices: list[DeviceView],
           recipients: int, test: bool = False, to: str | None = None) -> Sample:
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
        who = "" if recipient.account_id == STAND_IN else f"account {recipient.account_id}: "
        raise RenderFailure(f"{who}{exc}") from None
    return Sample(wave.name, recipient.locale, recipients, recipient, tuple(devices), rendered, data)


def samples(conn: Connection, d: Definition, renderer: Renderer, waves: list[WaveDef] | None = None,
            locale: str | None = None, test: bool = False, to: str | None = None) -> Iterator[Sample]:
    """One message per wave × locale of the audience now, each for a real account of that locale (the
    first by id). With `locale` given and nobody of it in the audience, a stand-in account is used."""
    found = audience.locales(conn, d)
    if locale is not None:
        found = [f for f in found if f[0] == locale] or [(locale, 0, "")]
    for wave in waves if waves is not None else list(d.waves):
        for loc, count, first in found:
            if count:
                recipient, devices = next(_affected(conn, d, account_ids=[first]))
            else:
                recipient, devices = _stand_in(d, loc)
            yield _build(renderer, d, wave, recipient, devices, count, test=test, to=to)


def check_campaign(conn: Connection, d: Definition, renderer: Renderer) -> int:
    """Render every wave × locale present in the audience (and the default locale): raises
    TemplateProblem naming the template file and line. Returns how many messages were rendered."""
    n = 0
    for wave in d.waves:
        renderer.template_locale(wave.name, d.default_locale)  # the fallback must exist for every wave
    for _ in samples(conn, d, renderer):
        n += 1
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
    locale = locale or d.default_locale
    return next(samples(conn, d, renderer, waves=[wave], locale=locale))


def render_all(conn: Connection, d: Definition, renderer: Renderer, wave: WaveDef,
               limit_errors: int = 20) -> tuple[int, list[str]]:
    """Render `wave` for every recipient in the audience now, streamed (for `schedule`): returns how many
    rendered and the first problems (`account: problem`)."""
    builder = builder_for(d, wave)
    ok, problems = 0, list[str]()
    now = db.utcnow()
    for recipient, devices in _affected(conn, d):
        try:
            rendered = renderer.render(wave, recipient, devices)
            builder.build(Parts(recipient.name, recipient.email, rendered.subject, rendered.text,
                                rendered.html, message_id(d.slug, wave.name, recipient.account_id,
                                                          d.sender_domain), now))
            ok += 1
        except (TemplateProblem, ValueError, HeaderInjection) as exc:  # RenderFailure, MessageTooLarge among them
            if len(problems) < limit_errors:
                problems.append(f"account {recipient.account_id}: {exc}")
    return ok, problems


def write_gallery(items: list[Sample], out: Path, d: Definition) -> Path:
    """Per wave × locale an .eml and an .html, and an index.html that shows them all: each a regular file
    replaced whole, none written through a link or into whatever else is at its name (`campaign.outfiles`)."""
    files: dict[str, bytes] = {}
    entries = []
    for s in items:
        stem = f"{s.wave}.{s.locale}"
        files[f"{stem}.eml"] = s.message
        files[f"{stem}.html"] = s.rendered.html.encode("utf-8")
        who = (f"{s.recipients} recipient{'s' if s.recipients != 1 else ''}" if s.recipients
               else "no recipient (stand-in account)")
        entries.append({"stem": stem, "who": who, "sample": s})
    files["index.html"] = pages.render("gallery.html.j2", name=d.name, slug=d.slug, cutoff=d.cutoff.isoformat(),
                                       generated=dt.datetime.now(dt.UTC).isoformat(), entries=entries
                                       ).encode("utf-8")
    with outfiles.Directory(out) as directory:
        directory.check(files)  # nothing written when one of them cannot be
        for name, data in files.items():
            directory.write(name, data)
    return out / "index.html"


@dataclass(frozen=True)
class TestSent:
    wave: str
    locale: str
    to: str
    status: str
    detail: str


def test_send(conn: Connection, d: Definition, renderer: Renderer, transport: Transport, to: list[str],
              waves: list[WaveDef]) -> list[TestSent]:
    """One message per wave × locale of the audience to each internal address, subject prefixed [TEST] and
    marked `X-Campaign-Test: yes`; each rendered for a real account of its locale. No ledger row."""
    envelopes, labels = [], []
    for address in to:
        for s in samples(conn, d, renderer, waves=waves, test=True, to=address):
            envelopes.append(Envelope(d.sender_address, (address,), s.message, message_id=""))
            labels.append((s.wave, s.locale, address))
    outcomes = send_all_sync(transport, envelopes)
    return [TestSent(w, loc, a, o.status, o.detail) for (w, loc, a), o in zip(labels, outcomes, strict=True)]


def _waves(d: Definition, wave: str | None) -> list[WaveDef]:
    if wave is None:
        return list(d.waves)
    try:
        return [d.wave(wave)]
    except KeyError:
        raise UsageError(f"no wave {wave!r} in {d.slug} (waves: {', '.join(w.name for w in d.waves)})") from None


def _campaign(conn: Connection, slug: str, templates: Path) -> tuple[int, Definition, Renderer]:
    from campaign.campaigns import get  # campaigns registers through check_campaign above

    c = get(conn, slug)
    return c.id, c.definition, Renderer(c.definition, templates)


def _locale_option(locale: str | None) -> str | None:
    """`--locale`, normalized (`de-de` → `de-DE`), or a usage error saying why not."""
    if not locale:
        return None
    try:
        return normalize_locale(locale)
    except ValueError as exc:
        raise UsageError(f"--locale: {exc}") from None


def preview(engine: Engine, templates: Path, slug: str, wave: str | None = None, locale: str | None = None,
            account_id: str | None = None) -> Sample:
    """`campaign preview`: one message of `wave` (default the first) for an account of `locale`, or for
    `account_id`, as it would be sent."""
    if locale and account_id:
        raise UsageError("give --locale or --account, not both")
    locale = _locale_option(locale)
    with db.read(engine) as conn:
        _, d, renderer = _campaign(conn, slug, templates)
        return preview_one(conn, d, renderer, _waves(d, wave)[0], locale, account_id)


def gallery(engine: Engine, templates: Path, slug: str, out: Path, wave: str | None = None,
            locale: str | None = None) -> tuple[int, Path]:
    """`campaign preview --out DIR`: every wave × locale as .eml and .html, and an index.html; returns
    (messages written, the index)."""
    locale = _locale_option(locale)
    with db.read(engine) as conn:
        _, d, renderer = _campaign(conn, slug, templates)
        items = list(samples(conn, d, renderer, waves=_waves(d, wave), locale=locale))
    return len(items), write_gallery(items, out, d)


def test_send_command(engine: Engine, config: Config, slug: str, to: list[str], wave: str | None = None,
                      dry_run: bool = False) -> list[TestSent]:
    """`campaign test-send`: one message per wave × locale to each internal address (checked first), with an
    audit event. Under `dry_run` the messages are built, recorded in memory, and nothing is sent."""
    addresses = []
    for raw in to:
        try:
            addresses.append(normalize_address(raw.strip()))
        except ValueError as exc:
            raise UsageError(f"--to: {exc}") from None
    transport: Transport = RecordingTransport() if dry_run else make_transport(config)
    with db.read(engine) as conn:
        campaign_id, d, renderer = _campaign(conn, slug, config.templates)
        results = test_send(conn, d, renderer, transport, addresses, _waves(d, wave))
    with db.transaction(engine, config.actor, "campaign.test_send", campaign_id=campaign_id, dry_run=dry_run) as tx:
        tx.note(to=addresses, messages=len(results), sent=sum(r.status == "sent" for r in results))
    return results
