"""Sandboxed, strict, localized rendering of a campaign's templates (SPEC §5, G5).

Templates live in `<templates>/<template>/<locale>/<wave>.subject.j2|.txt.j2|.html.j2`; a locale
falls back `de-AT` → `de` → the campaign's `default_locale`. Rendering is sandboxed
(`ImmutableSandboxedEnvironment`), undefined names are errors, HTML is autoescaped and text is not.
Every template error is raised as `TemplateProblem` naming the template file and line.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from babel import Locale
from babel.dates import format_date as babel_format_date
from babel.dates import format_datetime as babel_format_datetime
from babel.dates import get_timezone_gmt, get_timezone_location
from jinja2.environment import TemplateModule
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from campaign.definition import Definition, WaveDef
from campaign.errors import RenderFailure, TemplateProblem
from campaign.notices.fastpath import FastPath
from campaign.notices.personal import refusal
from campaign.recipients import DeviceView, Recipient

PARTS = ("subject", "txt", "html")


@dataclass(frozen=True)
class Rendered:
    """One recipient's message, rendered: what the message builder needs."""

    template_locale: str  # the template folder used, after fallback
    subject: str
    text: str
    html: str


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with a fast path for the two kinds of object that templates read most and
    that hold nothing but data: our read-only context mappings, and the variables an imported template
    exports. Everything else (strings, dates, anything unexpected) goes through the full checks."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)
        if kind is MappingProxyType:
            value = obj.get(attribute, _MISSING)
            if value is not _MISSING:
                return value
        elif kind is TemplateModule and not attribute.startswith("_"):
            value = obj.__dict__.get(attribute, _MISSING)
            if value is not _MISSING:
                return value
        return super().getattr(obj, attribute)


_MISSING = object()


def _locale(tag: str) -> Locale:
    return Locale.parse(tag, sep="-")



def language(tag: str) -> str:
    """A locale's language: `de` of `de-AT`."""
    return tag.split("-")[0]


def same_language(locale: str, template_locale: str) -> bool:
    """Whether a template folder speaks the reader's language (de-AT served by de does; ja-JP served by en-US is a
    fallback to another language)."""
    return language(locale) == language(template_locale)


class Renderer:
    """Renders one campaign's waves. Build once per campaign and process; templates are compiled once.

    `files` (path under the template folder -> text): render from these, a version's files as kept
    (`campaign.notices.kept`), not from the folder on disk, so that an edit of the folder after approval changes
    nothing that is sent; errors still name the file as it lies in the folder."""

    def __init__(self, definition: Definition, templates: Path, files: Mapping[str, str] | None = None) -> None:
        self.definition = definition
        self.root = templates / definition.template
        self.files = dict(files) if files is not None else None
        if self.files is None and not self.root.is_dir():
            raise TemplateProblem(f"{self.root}: no such template folder")
        loader: jinja2.BaseLoader = (jinja2.FileSystemLoader(str(self.root)) if self.files is None
                                     else jinja2.FunctionLoader(self._kept))
        self.env = _Sandbox(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith(".html.j2"),
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            cache_size=-1,  # keep every compiled template: a campaign has few
        )
        self.env.filters["format_date"] = _format_date
        self.env.filters["format_datetime"] = _format_datetime
        self.env.filters["zone_label"] = _zone_label
        self._globals = dict(self.env.globals)  # what a template sees besides our context (range, dict, ...)
        self._templates: dict[str, jinja2.Template] = {}
        self.campaign_view = MappingProxyType({
            "name": definition.name, "slug": definition.slug, "sender": definition.sender,
            "reply_to": definition.reply_to, "context": MappingProxyType(dict(definition.context)),
        })
        self.fast = FastPath(self._parts, lambda name: refusal(self.env, name), escape=self.env.filters["escape"])

    def _kept(self, name: str) -> tuple[str, str, Callable[[], bool]] | None:
        """A kept template by its name in the folder, with the path it had there (for errors and tracebacks)."""
        assert self.files is not None
        body = self.files.get(name)
        return None if body is None else (body, str(self.root / name), lambda: True)

    def exists(self, name: str) -> bool:
        """Whether the template `name` (a path under the template folder) is there to render."""
        return (self.root / name).is_file() if self.files is None else name in self.files

    # -- locales ----------------------------------------------------------------------------------

    @functools.cache  # noqa: B019 - one Renderer per campaign, few locales
    def template_locale(self, wave: str, locale: str) -> str:
        """The template folder for `locale`: itself, its language, or the default locale."""
        for candidate in (locale, language(locale), self.definition.default_locale):
            if self.exists(f"{candidate}/{wave}.subject.j2"):
                return candidate
        raise TemplateProblem(
            f"{self.root / self.definition.default_locale / (wave + '.subject.j2')}: missing — the default "
            f"locale {self.definition.default_locale} needs templates for wave {wave!r}")

    def available_locales(self) -> list[str]:
        if self.files is not None:
            return sorted({n.split("/")[0] for n in self.files if "/" in n and not n.startswith(("_", "."))})
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    # -- rendering --------------------------------------------------------------------------------

    def context(self, wave: WaveDef, recipient: Recipient, devices: Sequence[DeviceView],
                format_locale: str) -> dict[str, Any]:
        zone = ZoneInfo(recipient.timezone)
        cutoff = self.definition.cutoff
        return {
            **self._globals,
            "account": MappingProxyType({"name": recipient.name, "email": recipient.email,
                                         "locale": recipient.locale, "timezone": recipient.timezone}),
            # `changed_at`: when the device was switched — before the flip (previews, `create`), the cutoff.
            "devices": tuple(MappingProxyType({"name": d.name, "model": d.model,
                                               "changed_at": (d.changed_at or cutoff).astimezone(zone)})
                             for d in devices),
            "cutoff": cutoff.astimezone(zone),
            "campaign": self.campaign_view,
            "wave": MappingProxyType({"name": wave.name, "at": wave.at.astimezone(zone),
                                      "audience": wave.audience}),
            "_format": (format_locale, zone),
        }

    def render(self, wave: WaveDef, recipient: Recipient, devices: Sequence[DeviceView]) -> Rendered:
        """Render the three parts of `wave` for one recipient; raises TemplateProblem. Through the fast path
        (`campaign.notices.fastpath`) where it is proven to give the same bytes, else in full."""
        folder = self.template_locale(wave.name, recipient.locale)
        out = self.fast.parts(wave, folder, recipient, devices)
        return self._finish(folder, wave, out if out is not None else self._parts(wave, folder, recipient, devices))

    def render_full(self, wave: WaveDef, recipient: Recipient, devices: Sequence[DeviceView]) -> Rendered:
        """`render` without the fast path: every template run for this one recipient (what the fast path is
        compared with, in tests and benchmarks)."""
        folder = self.template_locale(wave.name, recipient.locale)
        return self._finish(folder, wave, self._parts(wave, folder, recipient, devices))

    def _parts(self, wave: WaveDef, folder: str, recipient: Recipient, devices: Sequence[DeviceView]) -> list[str]:
        # Dates in the recipient's own locale when the template speaks their language (de-AT reads
        # "Jänner" in the de template), otherwise in the template's: no French dates in English text.
        format_locale = recipient.locale if same_language(recipient.locale, folder) else folder
        ctx = self.context(wave, recipient, devices, format_locale)
        return [self._render_one(f"{folder}/{wave.name}.{part}.j2", ctx) for part in PARTS]

    def _finish(self, folder: str, wave: WaveDef, out: list[str]) -> Rendered:
        subject = " ".join(out[0].split())  # one line, whatever the template's layout
        if not subject:
            raise RenderFailure(f"{self.root / folder / (wave.name + '.subject.j2')}: renders an empty subject")
        text = out[1].strip("\n") + "\n"
        html = out[2].strip("\n") + "\n"
        return Rendered(folder, subject, text, html)

    def _render_one(self, name: str, ctx: dict[str, Any]) -> str:
        # `Template.render`, without copying the context and the globals into a new dict for each of the
        # three parts of each message: `ctx` already holds the globals, and a template never changes it
        # (its own variables live in the Context). Errors go through Jinja's handler as in `render`, which
        # points their tracebacks at the template's lines.
        try:
            template = self._templates.get(name)
            if template is None:
                template = self._templates[name] = self.env.get_template(name)
            try:
                return self.env.concat(template.root_render_func(template.new_context(ctx, shared=True)))
            except Exception:
                self.env.handle_exception()
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or str(self.root / (exc.name or name))
            raise TemplateProblem(f"{where}:{exc.lineno}: syntax error: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            if exc.name == name:  # the message's own part: "no template for de / notice"
                folder, _, file = name.partition("/")
                raise TemplateProblem(f"no template for `{folder}` / `{file.split('.')[0]}` (looked for "
                                      f"{self.root / name})") from None
            raise TemplateProblem(f"{self.root / name}: includes or extends {exc.name}, which does not exist "
                                  f"(looked for {self.root / str(exc.name)})") from None
        except jinja2.UndefinedError as exc:
            where = _template_frame(exc) or f"{self.root / name}"
            raise RenderFailure(f"{where}: {_undefined_words(exc, ctx, self._globals)}") from None
        except Exception as exc:  # anything else the template ran into, with this recipient's data
            where = _template_frame(exc) or f"{self.root / name}"
            if isinstance(exc, SecurityError):
                kind = "not allowed in a template"
            elif isinstance(exc, RecursionError):
                kind = "RecursionError (a macro or include calls itself without end)"
            else:
                kind = type(exc).__name__
            raise RenderFailure(f"{where}: {kind}: {_short(exc)}") from None


_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'")
_NAME = re.compile(r"^'([^']+)' is undefined")


def _undefined_words(exc: jinja2.UndefinedError, ctx: dict[str, Any], globals_: dict[str, Any]) -> str:
    """An undefined name in plain words, with the names the context has (not 'mappingproxy object has no
    attribute …')."""
    names = sorted(k for k in ctx if not k.startswith("_") and k not in globals_)
    campaign = ctx.get("campaign")
    context = sorted(campaign["context"]) if isinstance(campaign, MappingProxyType) else []
    text = str(exc)
    m = _ATTRIBUTE.search(text) or _NAME.search(text)
    missing = m.group(1) if m else text
    return (f"`{missing}` is not defined: the template reads a name its context does not have (the context has "
            f"{', '.join(names)}; campaign.context, from the definition's [context], has "
            f"{', '.join(context) or 'nothing'})")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _template_frame(exc: BaseException) -> str | None:
    """`path:line` of the innermost template frame in the traceback (Jinja rewrites them to the .j2)."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = f"{filename}:{lineno}"
    return found


def _format_args(ctx: Any) -> tuple[str, ZoneInfo]:
    locale, zone = ctx["_format"]
    return locale, zone


# Formatting is memoized: a wave's messages format the same few instants (the cutoff, the wave's time)
# in the same few (locale, zone) pairs, and Babel takes tens of microseconds a call.
@functools.lru_cache(maxsize=65536)
def _cached_date(value: dt.date, format: str, locale: str) -> str:
    return str(babel_format_date(value, format=format, locale=_locale(locale)))


@functools.lru_cache(maxsize=65536)
def _cached_datetime(value: dt.datetime, format: str, locale: str, zone: ZoneInfo) -> str:
    return str(babel_format_datetime(value, format=format, tzinfo=zone, locale=_locale(locale)))


@jinja2.pass_context
def _format_date(ctx: Any, value: dt.datetime | dt.date, format: str = "long") -> str:
    locale, zone = _format_args(ctx)
    if isinstance(value, dt.datetime):
        value = value.astimezone(zone).date()
    return _cached_date(value, format, locale)


@jinja2.pass_context
def _format_datetime(ctx: Any, value: dt.datetime, format: str = "long") -> str:
    locale, zone = _format_args(ctx)
    return _cached_datetime(value, format, locale, zone)


# Zones whose CLDR "city" is a name of an offset (Etc/GMT+5 is five hours *behind*): their label is the offset alone.
_NO_CITY = ("Etc/", "UTC", "UCT", "GMT", "Universal", "Zulu", "Greenwich")


@functools.lru_cache(maxsize=65536)
def _cached_zone_label(value: dt.datetime, locale: str, zone: ZoneInfo) -> str:
    local = value.astimezone(zone)
    gmt = str(get_timezone_gmt(local, width="long", locale=_locale(locale)))
    if zone.key.startswith(_NO_CITY):
        return gmt
    return f"{gmt}, {get_timezone_location(zone, locale=_locale(locale), return_city=True)}"


@jinja2.pass_context
def _zone_label(ctx: Any, value: dt.datetime) -> str:
    """The reader's zone at `value`: its offset then, from tzdata, and the zone's city ('GMT+01:00, Dublin').
    CLDR's long names (`format_datetime("zzzz")`) are wrong where tzdata and CLDR disagree: Dublin's winter
    read 'Irish Standard Time', its summer 'Greenwich Mean Time'."""
    locale, zone = _format_args(ctx)
    return _cached_zone_label(value, locale, zone)
