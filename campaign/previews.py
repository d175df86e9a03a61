"""What a campaign's messages will look like, for people: `preview`, the gallery, `test-send` (the rendering they
show is `campaign.notices.proofs`'s). What is shared for review is rendered for made-up people (`campaign.notices.
standins`), a real account's data only when asked for and then in the audit log. No ledger row is written here."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup
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
    entries = {}
    for s in items:
        stem = f"{s.wave}.{s.locale}"
        files[f"{stem}.eml"] = s.message
        files[f"{stem}.html"] = s.rendered.html.encode("utf-8")
        entries[s.wave, s.locale] = _entry(s, stem)
    waves = list(dict.fromkeys(s.wave for s in items))
    locales = list(dict.fromkeys(s.locale for s in items))
    files["index.html"] = pages.render(
        "gallery.html.j2", name=d.name, slug=d.slug, cutoff=d.cutoff.isoformat(),
        generated=dt.datetime.now(dt.UTC).isoformat(), entries=list(entries.values()), locales=locales,
        grid=[(w, [entries.get((w, loc)) for loc in locales]) for w in waves],
        default_locale=d.default_locale, real=any(not s.stand_in for s in items),
        fallbacks=sum(e["fallback"] is not None for e in entries.values()),
    ).encode("utf-8")
    with outfiles.Directory(out) as directory:
        directory.check(files)  # nothing written when one of them cannot be
        for name, data in files.items():
            directory.write(name, data)
    return out / "index.html"


# The message's HTML goes into the index inside a declarative shadow root (<template shadowrootmode>): shown at
# its own height, as a mail reader shows it, its styles kept to itself and the index's kept out, with no script.
# An iframe would need one to take its message's height. The document's own <html>, <head> and <body> have no
# place there: the body becomes a <div> that keeps its style, the rest is dropped.
_DOCUMENT_TAGS = re.compile(r"<!doctype[^>]*>|</?(?:html|head)\b[^>]*>", re.IGNORECASE)
_BODY_TAG = re.compile(r"<(/?)body\b", re.IGNORECASE)


def _inline(html: str) -> Markup:
    # Markup: the message's own HTML, every value in it escaped when its templates rendered it (they autoescape);
    # the index's page forbids script (its Content-Security-Policy), should a template hold some.
    return Markup(_BODY_TAG.sub(r"<\1div", _DOCUMENT_TAGS.sub("", html)))  # noqa: S704 - escaped already, above


def _accounts(n: int) -> str:
    return f"{n:,} account{'s' if n != 1 else ''}" if n else "nobody in the audience now"


def _entry(s: Sample, stem: str) -> dict[str, Any]:
    """What the index shows of one message: where it is, whom it serves, and whether another language serves it."""
    template = s.rendered.template_locale
    language = s.locale.split("-")[0]
    fallback = None
    if template.split("-")[0] != language:  # de-AT served by de is its own language: no mark
        tried = s.locale if s.locale == language else f"{s.locale} or {language}"
        fallback = f"served by the {template} template (no {tried} template for {s.wave})"
    r = s.recipient
    who = (f"{r.name} <{r.email}>, {r.timezone}: made up (a stand-in, nobody's data)" if s.stand_in
           else f"account {r.account_id} ({r.name} <{r.email}>), {r.timezone}: a real account (--real-sample)")
    return {"stem": stem, "wave": s.wave, "locale": s.locale, "accounts": _accounts(s.recipients), "who": who,
            "devices": len(s.devices), "template": template, "fallback": fallback, "subject": s.rendered.subject,
            "text": s.rendered.text, "html": _inline(s.rendered.html)}


@dataclass(frozen=True)
class TestSent(Fields):
    wave: str
    locale: str
    to: str
    status: str
    detail: str


def test_send(conn: Connection, d: Definition, renderer: Renderer, transport: Transport, to: list[str],
              waves: list[WaveDef], real_sample: bool = False) -> list[TestSent]:
    """One message per wave × locale of the audience to each internal address, subject prefixed [TEST] and
    marked `X-Campaign-Test: yes`; each rendered for its locale's stand-in (or, with `real_sample`, a real account
    of it). No ledger row."""
    envelopes, labels = [], []
    for address in to:
        for s in samples(conn, d, renderer, waves=waves, test=True, to=address, real=real_sample):
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
    """`campaign preview`: one message of `wave` (default the first) as it would be sent, for the stand-in of
    `locale` (default the campaign's default locale), or for the real account `account_id`."""
    if locale and account_id:
        raise UsageError("give --locale or --account, not both")
    locale = _locale_option(locale)
    with db.read(engine) as conn:
        _, d, renderer = _campaign(conn, slug, templates)
        return preview_one(conn, d, renderer, _waves(d, wave)[0], locale, account_id)


def gallery(engine: Engine, config: Config, slug: str, out: Path, wave: str | None = None,
            locale: str | None = None, real_sample: bool = False) -> tuple[int, Path]:
    """`campaign preview --out DIR`: every wave × locale as .eml and .html, and an index.html; returns
    (messages written, the index). Each rendered for its locale's stand-in; with `real_sample`, for a real
    account, which the audit log records (`campaign.preview_real_sample`: who, where, how many)."""
    locale = _locale_option(locale)
    with db.read(engine) as conn:
        campaign_id, d, renderer = _campaign(conn, slug, config.templates)
        items = list(samples(conn, d, renderer, waves=_waves(d, wave), locale=locale, real=real_sample))
    if not real_sample:
        return len(items), write_gallery(items, out, d)
    # The event commits with the files written (an error writing them rolls it back): customers' data left
    # this database for a folder, and the log says who put it where.
    with db.transaction(engine, config.actor, "campaign.preview_real_sample", campaign_id=campaign_id) as tx:
        index = write_gallery(items, out, d)
        tx.note(out=str(out.absolute()), messages=len(items),
                locales=sorted({s.locale for s in items if not s.stand_in}))
    return len(items), index


def test_send_command(engine: Engine, config: Config, slug: str, to: list[str], wave: str | None = None,
                      dry_run: bool = False, real_sample: bool = False) -> list[TestSent]:
    """`campaign test-send`: one message per wave × locale to each internal address (checked first), with an
    audit event (which says whether they carried real accounts' data: `real_sample`). Under `dry_run` the
    messages are built, recorded in memory, and nothing is sent."""
    addresses = []
    for raw in to:
        try:
            addresses.append(normalize_address(raw.strip()))
        except ValueError as exc:
            raise UsageError(f"--to: {exc}") from None
    transport: Transport = RecordingTransport() if dry_run else make_transport(config)
    with db.read(engine) as conn:
        campaign_id, d, renderer = _campaign(conn, slug, config.templates)
        results = test_send(conn, d, renderer, transport, addresses, _waves(d, wave), real_sample=real_sample)
    with db.transaction(engine, config.actor, "campaign.test_send", campaign_id=campaign_id, dry_run=dry_run) as tx:
        tx.note(to=addresses, messages=len(results), sent=sum(r.status == "sent" for r in results),
                real_sample=real_sample)
    return results
