"""What every route of the console shares: the database and configuration, who is asking (proven on every
request), what they may do, the CSRF tokens, the pages' templates, and the answers that are not a page (401, 403,
a refusal in words)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jinja2
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from campaign.config import Config
from campaign.console.counts import Counts
from campaign.console.csrf import FIELD, Csrf, same_origin
from campaign.console.identity import PERSONA_COOKIE, Identity, Unauthenticated, Verifier, persona, token_from
from campaign.console.roles import Roles
from campaign.errors import CampaignError, NotFound, StateError, UsageError
from campaign.redaction import redact
from campaign.validation import check_timezone, escape_controls
from campaign.wording import duration

log = logging.getLogger("campaign.console")

# No script anywhere, styles from our own stylesheet only, never inside a frame.
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'")
# A document of its own (the HTML report, a message as sent): its inline styles, still no script.
DOCUMENT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; frame-ancestors 'none'"
MAX_FORM_BYTES = 4096  # a form of the console holds a token and a word or two
ZONE_COOKIE = "campaign_zone"


@dataclass
class Console:
    """The app's state: built once by `campaign serve` (or a test), read by every request."""

    config: Config
    engine: Engine
    verifier: Verifier | None  # None in demo mode
    roles: Roles
    csrf: Csrf = field(default_factory=Csrf)
    counts: Counts = field(init=False)  # the pages' figures that scan the ledger, counted in the background

    def __post_init__(self) -> None:
        self.counts = Counts(self.engine)

    @property
    def demo(self) -> bool:
        return self.verifier is None

    async def identify(self, request: Request) -> Identity:
        """Who is asking: the token verified (in a thread: the JWKS may be fetched), or the demo persona."""
        if self.verifier is None:
            found = persona(request.cookies.get(PERSONA_COOKIE, ""), self.config.actor)
            if found is None:
                raise Unauthenticated("no demo persona picked")
            return found
        token = token_from(request.headers, self.verifier.config.header)
        return await run_in_threadpool(self.verifier.verify, token)


@functools.cache
def environment() -> jinja2.Environment:
    """The console's templates: autoescaped, an undefined name an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("campaign.console", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined, auto_reload=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = duration
    env.filters["number"] = lambda n: f"{n:,}"
    return env


def viewer_zone(request: Request) -> str:
    """The time zone the viewer reads times in: `?tz=`, else the one they chose before (a cookie), else UTC."""
    for value in (request.query_params.get("tz"), request.cookies.get(ZONE_COOKIE)):
        if value:
            try:
                return check_timezone(value)
            except ValueError:
                continue
    return "UTC"


def when(value: str | dt.datetime | None, zone: str, cutoff: dt.datetime | None = None) -> str:
    """'2025-03-14 09:00 UTC · 10:00 CET (Europe/Berlin) · 14 days before the cutoff'."""
    if value is None:
        return "—"
    t = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    t = t.astimezone(dt.UTC)
    out = f"{t:%Y-%m-%d %H:%M} UTC"
    if zone != "UTC":
        local = t.astimezone(zoneinfo.ZoneInfo(zone))
        out += f" · {local:%a %d %b %H:%M %Z} ({zone})"
    if cutoff is not None:
        delta = (t - cutoff).total_seconds()
        out += (" · at the cutoff" if abs(delta) < 60 else
                f" · {duration(delta)} {'before' if delta < 0 else 'after'} the cutoff")
    return out


def render(console: Console, request: Request, template: str, who: Identity | None, status: int = 200,
           **values: Any) -> HTMLResponse:
    """A page of the console, with who is asking, their roles and the CSRF token of their forms."""
    zone = viewer_zone(request)
    html = environment().get_template(template).render(
        who=who, roles=sorted(console.roles.of(who)) if who else [], may=lambda a: bool(who and console.roles.may(
            who, a)), csrf=console.csrf.token(who.email) if who else "", demo=console.demo, zone=zone,
        when=lambda v, cutoff=None: when(v, zone, cutoff), path=request.url.path, **values)
    response = HTMLResponse(html, status_code=status)
    if request.query_params.get("tz") and zone == request.query_params.get("tz"):
        response.set_cookie(ZONE_COOKIE, zone, httponly=True, samesite="strict", max_age=365 * 86400)
    return response


def unauthorized(console: Console, request: Request, reason: Unauthenticated) -> Response:
    """401, nothing rendered, the reason logged (not said: it would help whoever forges tokens)."""
    log.warning("console: 401 %s %s: %s", request.method, request.url.path, redact(str(reason)))
    if console.demo and request.method == "GET":
        return RedirectResponse("/demo/persona", status_code=303)
    return PlainTextResponse("401 Unauthorized: sign in through the single sign-on proxy.\n", status_code=401)


def forbidden(what: str) -> Response:
    return PlainTextResponse(f"403 Forbidden: {what}\n", status_code=403)


def refusal(console: Console, request: Request, who: Identity, exc: CampaignError) -> Response:
    """The core's refusal in its own words, escaped: 404 for what does not exist, 400 for bad input, 409 for a
    state that forbids it."""
    status = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, UsageError) else \
        409 if isinstance(exc, StateError) else 500
    return render(console, request, "refused.html.j2", who, status=status, message=escape_controls(str(exc)))


Handler = Callable[[Console, Request, Identity], Awaitable[Response]]


def guarded(action: str, post: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A route that needs a proven identity allowed to `action`; a POST also needs its CSRF token (and an Origin
    or Referer, when sent, naming this host). The core's expected failures become a page that says them."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            try:
                who = await console.identify(request)
            except Unauthenticated as exc:
                return unauthorized(console, request, exc)
            if not console.roles.may(who, action):
                log.info("console: 403 %s %s for %s (%s)", request.method, request.url.path, who.email, action)
                return forbidden(f"{who.email} may not {action} here (the roles are in [console.roles])")
            if post:
                if not same_origin(request.headers):
                    return forbidden("the form came from another site")
                form = await read_form(request)
                if form is None:
                    return PlainTextResponse("413 a form of the console is small\n", status_code=413)
                if not console.csrf.valid(who.email, form.get(FIELD)):
                    return forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
                request.state.form = form
            try:
                return await handler(console, request, who)
            except CampaignError as exc:
                return refusal(console, request, who, exc)

        return endpoint

    return wrap


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body of a POST, or None when it is larger than `limit` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of a POST, or None when it is larger than MAX_FORM_BYTES (read no further)."""
    body = await read_body(request, MAX_FORM_BYTES)
    if body is None:
        return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    except ValueError:  # more fields than any form of ours has
        return None
    return {k: v[0] for k, v in fields.items()}
