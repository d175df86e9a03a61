"""What a campaign's messages will look like, for people: `preview`, the gallery, `test-send` (the rendering they
show is `campaign.notices.proofs`'s). What is shared for review is rendered for made-up people (`campaign.notices.
standins`), a real account's data only when asked for and then in the audit log. No ledger row is written here."""

from __future__ import annotations

import datetime as dt
import math
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, outfiles, pages
from campaign.addresses import normalize as normalize_address
from campaign.config import Config
from campaign.definition import Definition, WaveDef
from campaign.delivery.transport import Envelope, RecordingTransport, Transport, make_transport, send_all_sync
from campaign.errors import UsageError
from campaign.notices.proofs import Sample, preview_one, samples
from campaign.notices.rendering import Renderer, language, same_language
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
        fallbacks=sum(e["fallback"] is not None for e in entries.values()), frame_width=FRAME_WIDTH,
    ).encode("utf-8")
    with outfiles.Directory(out) as directory:
        directory.check(files)  # nothing written when one of them cannot be
        for name, data in files.items():
            directory.write(name, data)
    return out / "index.html"


# A message's HTML is shown in a frame as tall as the message, so that a reviewer reads it whole in the page's
# one scroll. A frame takes its content's height only with a script, and the gallery runs none; so its height
# is reckoned here from the message's text, generously (a few lines too many rather than one too few), at the
# frame's width. A message far from that reckoning shows a scroll bar in its frame, never a cut.
FRAME_WIDTH = 660  # pixels: a mail reader's column (the shipped layout is 600 wide, padded)
# Measured in headless Chromium on the shipped templates (every wave in English, German, Spanish, Japanese): these
# reckon each message 7 to 16 % taller than it is. A wide (CJK) character counts 1.5, not 2: Japanese lines break
# anywhere and fill up, where Latin ones break between words.
_UNITS_PER_LINE = 58  # text units (a Latin character 1, a wide one _WIDE) of a 16-pixel line in a 600-pixel column
_WIDE = 1.5
_LINE, _GAP, _FRAME = 26, 14, 100  # pixels: a line, a block's margin, the layout around the text


class _Blocks(HTMLParser):
    """The text units of each block of an HTML message: paragraphs, list items, headings, cells."""

    BLOCK = frozenset({"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "div", "td", "th", "tr", "ul", "ol", "table",
                       "pre", "blockquote", "br", "hr", "section", "header", "footer"})
    HIDDEN = frozenset({"head", "style", "title", "script"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.units: list[float] = [0.0]
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        if tag in self.BLOCK:
            self.units.append(0.0)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self.hidden:
            self.hidden -= 1
        if tag in self.BLOCK:
            self.units.append(0.0)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            text = " ".join(data.split())
            self.units[-1] += sum(_WIDE if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def frame_height(html: str) -> int:
    """The height, in pixels, of a frame FRAME_WIDTH wide that shows the message `html` whole."""
    blocks = _Blocks()
    blocks.feed(html)
    blocks.close()
    filled = [u for u in blocks.units if u]
    lines = sum(math.ceil(u / _UNITS_PER_LINE) for u in filled)
    return _FRAME + lines * _LINE + len(filled) * _GAP


def _accounts(n: int) -> str:
    return f"{n:,} account{'s' if n != 1 else ''}" if n else "nobody in the audience now"


def _entry(s: Sample, stem: str) -> dict[str, Any]:
    """What the index shows of one message: where it is, whom it serves, and whether another language serves it."""
    template = s.rendered.template_locale
    fallback = None
    if not same_language(s.locale, template):  # de-AT served by de is its own language: no mark
        tried = s.locale if s.locale == language(s.locale) else f"{s.locale} or {language(s.locale)}"
        fallback = f"served by the {template} template (no {tried} template for {s.wave})"
    r = s.recipient
    who = (f"{r.name} <{r.email}>, {r.timezone}: made up (a stand-in, nobody's data)" if s.stand_in
           else f"account {r.account_id} ({r.name} <{r.email}>), {r.timezone}: a real account (--real-sample)")
    return {"stem": stem, "wave": s.wave, "locale": s.locale, "accounts": _accounts(s.recipients), "who": who,
            "devices": len(s.devices), "template": template, "fallback": fallback, "subject": s.rendered.subject,
            "text": s.rendered.text, "height": frame_height(s.rendered.html)}


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
