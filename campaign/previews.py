"""What a campaign's messages will look like, for people: `preview`, the gallery, `test-send` (the rendering they
show is `campaign.notices.proofs`'s). No ledger row is written here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, outfiles, pages
from campaign.addresses import normalize as normalize_address
from campaign.config import Config
from campaign.definition import Definition, WaveDef
from campaign.delivery.transport import Envelope, RecordingTransport, Transport, make_transport, send_all_sync
from campaign.errors import UsageError
from campaign.notices.proofs import Sample, preview_one, samples
from campaign.notices.rendering import Renderer
from campaign.results import Fields
from campaign.validation import normalize_locale


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
class TestSent(Fields):
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
    c = campaigns.get(conn, slug)
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
